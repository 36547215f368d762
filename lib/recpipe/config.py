"""Typed, layered configuration.

`conf/base.yaml` holds every key with its default. A profile (`conf/local.yaml`,
`conf/cluster.yaml`, or any file) overrides some of them, and `--set section.key=value`
overrides after that. Everything is checked against the frozen dataclasses below: an
unknown key, a value of the wrong type, a bad date or a missing file raises `ConfigError`
naming the key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from recpipe.errors import ConfigError
from recpipe.paths import has_scheme, join_uri, normalize_root

BASE_FILE_NAME = "base.yaml"
# conf/ of the checkout, installed with the package: base.yaml, the profiles, the Airflow DAG.
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
# Settings that name a local place. Relative in a config file, they are taken from that
# file's folder, so that a config means the same places from any working directory; on
# the command line (--set), from the current directory, as the shell would.
LOCAL_PATH_KEYS = (("paths", "root"), ("cluster", "run_dir"), ("submit", "jobs_dir"), ("submit", "py_files"))
DAY_SLOT = "{dt}"  # where a sub-table's path puts `dt=D`


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay text until checked against their key,
    so an impossible date is reported with its key instead of crashing the parser."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class PathsConfig:
    root: str


@dataclass(frozen=True)
class TablesConfig:
    raw_events: str
    raw_items: str
    truth: str
    truth_impressions: str
    manifest: str
    ingest_report: str
    events: str
    rejects: str
    quality: str
    dim_users: str
    dim_items: str
    dim_categories: str
    dim_brands: str
    catalogue: str
    user_features: str
    item_features: str
    sequences: str
    samples: str
    als: str
    als_user_factors: str
    als_item_factors: str
    als_candidates: str
    recommendations: str
    ranker_input: str
    ranker_input_train: str
    ranker_input_valid: str
    ranker_input_test: str
    checkpoints: str
    ranker_quality: str


@dataclass(frozen=True)
class SparkConfig:
    master: str
    app_name: str
    shuffle_partitions: int
    driver_memory: str
    persist_level: str
    cache_compressed: bool
    list_rows_per_task: int
    local_dir: str
    extra: dict


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    artifact_root: str


@dataclass(frozen=True)
class LoggingConfig:
    heartbeat_seconds: int


@dataclass(frozen=True)
class GenerateConfig:
    seed: int
    start_date: dt.date
    days: int
    users: int
    items: int
    categories: int
    brands_per_category: int
    latent_dim: int
    brand_spread: float
    item_spread: float
    popularity_sigma: float
    price_median: float
    price_sigma: float
    interests_min: int
    interests_max: int
    daily_active_share: float
    requests_per_active_user: float
    session_continue_share: float
    request_gap_mean_s: float
    feed_size: int
    candidate_interest_share: float
    history_window: int
    click_bias: float
    click_similarity_weight: float
    click_popularity_weight: float
    click_position_decay: float
    cold_start_damping: float
    action_delay_mean_s: float
    cart_rate: float
    purchase_rate: float
    epoch_ms_share: float
    late_rate: float
    bot_users_per_day: int
    bot_events_per_hour: int
    bot_click_share: float
    events_per_file: int
    gzip_level: int
    rate_malformed_json: float
    rate_missing_field: float
    rate_unknown_event_type: float
    rate_bad_timestamp: float
    rate_future_timestamp: float
    rate_invalid_value: float
    rate_duplicate_same_day: float
    rate_duplicate_previous_day: float
    malformed_garbage_share: float
    invalid_price_share: float

    @property
    def dates(self) -> list[dt.date]:
        return [self.start_date + dt.timedelta(days=i) for i in range(self.days)]


@dataclass(frozen=True)
class CleanConfig:
    required_fields: tuple
    event_types: tuple
    future_tolerance_minutes: int
    earliest_date: dt.date
    dedup_lookback_days: int
    bot_window_minutes: int
    bot_max_events_per_window: int
    events_files_per_day: int
    rejects_files_per_day: int
    snapshot_files_per_day: int
    parse_partitions: int


@dataclass(frozen=True)
class QualityGateConfig:
    accept: bool
    trailing_days: int
    min_line_ratio: float
    max_line_ratio: float
    max_reject_share: dict
    check_event_types: bool
    max_quarantined_files: int


@dataclass(frozen=True)
class FeaturesConfig:
    history_length: int
    history_event_types: tuple
    lookback_days: int
    windows_days: tuple
    top_categories: int
    category_shares: bool
    attribution_minutes: int
    train_days: int
    eval_split: str
    valid_share: float
    holdout_share: float
    negative_sampling_rate: float
    sampling_seed: int
    row_group_mb: int
    max_records_per_file: int
    min_files_per_split: int
    files_per_day: int


@dataclass(frozen=True)
class AlsConfig:
    train_days: int
    confidence_weights: dict
    decay_half_life_days: float
    rank: int
    reg_param: float
    alpha: float
    max_iter: int
    seed: int
    checkpoint_interval: int
    cold_start_strategy: str
    top_k: int
    exclude_seen: bool
    eval_ks: tuple
    eval_users: str
    item_block_size: int
    user_block_size: int
    register_model: bool


@dataclass(frozen=True)
class EvaluationConfig:
    days: int


@dataclass(frozen=True)
class HistoryConfig:
    cutoff: str
    leave_last_out_min_positives: int
    report_seeds: int
    holdout_share: float
    holdout_valid_share: float


@dataclass(frozen=True)
class RankerConfig:
    item_embedding_dim: int
    cat_embedding_dim: int
    embedding_init_std: float
    item_init_std: float
    item_weight_decay: float
    use_brand: bool
    position_buckets: int
    attention_hidden: tuple
    attention_weighting: str
    attention_similarity: str
    pooled_similarity: bool
    head_hidden: tuple
    activation: str
    dropout: float
    use_als_score: bool
    compare_base_model: bool
    batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float
    early_stopping_patience: int
    seed: int
    shuffle_queue: int
    reader_workers: int
    input_rows_per_file: int
    eval_batch_size: int
    num_processes: int
    local_mode: bool
    use_gpu: bool
    progress: bool
    resume: bool
    popularity_feature: str
    heatmap_users: int
    register_model: bool


@dataclass(frozen=True)
class FittedOracleConfig:
    enabled: bool
    history_window: int
    dim: int
    epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    bias_decay: float
    seed: int


@dataclass(frozen=True)
class PromoteConfig:
    min_gauc_gain: float
    min_auc_gain: float
    split: str
    checked_rows: int
    rows_per_frame: int


@dataclass(frozen=True)
class ScoreConfig:
    top_n: int
    exclude_history: bool
    files_per_day: int
    batch_users: int
    torch_threads: int


@dataclass(frozen=True)
class NightlyConfig:
    stages: tuple
    markers: str
    lock_file: str
    promote_backfill: bool


@dataclass(frozen=True)
class ClusterConfig:
    host: str
    master_port: int
    master_webui_port: int
    workers: int
    worker_cores: int
    worker_memory: str
    run_dir: str
    start_timeout_s: int


@dataclass(frozen=True)
class SubmitConfig:
    enabled: bool
    jobs_dir: str
    py_files: str
    python: str
    conf: dict
    timeout_s: int


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    tables: TablesConfig
    spark: SparkConfig
    mlflow: MlflowConfig
    logging: LoggingConfig
    generate: GenerateConfig
    clean: CleanConfig
    quality_gate: QualityGateConfig
    features: FeaturesConfig
    als: AlsConfig
    evaluation: EvaluationConfig
    history: HistoryConfig
    ranker: RankerConfig
    fitted_oracle: FittedOracleConfig
    promote: PromoteConfig
    score: ScoreConfig
    nightly: NightlyConfig
    cluster: ClusterConfig
    submit: SubmitConfig
    sources: tuple[str, ...] = ()  # the files and overrides this config was built from

    def table_path(self, name: str, date: dt.date | None = None) -> str:
        """The location of a table by its name in `tables:`, or of one day of it (`dt=D`
        appended, or put where the name's path says `{dt}`)."""
        try:
            relative = getattr(self.tables, name)
        except AttributeError:
            raise ConfigError(f"unknown table {name!r}: not a key of tables:") from None
        path = join_uri(self.paths.root, relative)
        if DAY_SLOT in relative:
            if date is None:
                raise ConfigError(f"tables.{name}: a sub-table of one day ({relative}); give its date")
            return path.replace(DAY_SLOT, f"dt={date.isoformat()}")
        return join_uri(path, f"dt={date.isoformat()}") if date else path

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-serialisable form of the resolved configuration."""
        out = {}
        for field in dataclasses.fields(self):
            if field.name == "sources":
                continue
            section = dataclasses.asdict(getattr(self, field.name))
            out[field.name] = {k: _plain(v) for k, v in section.items()}
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    return list(value) if isinstance(value, tuple) else value


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config) if f.name != "sources"
}


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Load `base.yaml` beside `path`, then `path` itself, then `--set` overrides.

    Args:
        path: a profile such as `conf/local.yaml`, or `conf/base.yaml` itself.
        overrides: strings `section.key=value`; the value is parsed as the key's type.

    Returns:
        The frozen, fully checked configuration.

    Raises:
        ConfigError: naming the file (or `--set`) and the key at fault.
    """
    profile = Path(path)
    if not profile.is_file():
        raise ConfigError(f"{profile}: config file not found")
    base = profile.parent / BASE_FILE_NAME
    if not base.is_file():  # a profile of the user's own, anywhere: over the installed defaults
        base = PACKAGED_CONF / BASE_FILE_NAME

    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    layers = [base] if base.resolve() == profile.resolve() else [base, profile]
    for layer in layers:
        _merge_file(merged, layer, allow_new_keys=layer is base)
    for override in overrides:
        _merge_override(merged, override)
    _anchor_local_paths(merged)
    return _build(merged, sources=tuple(str(p) for p in layers) + tuple(f"--set {o}" for o in overrides))


def _anchor_local_paths(merged: dict) -> None:
    """Make each relative local path of LOCAL_PATH_KEYS absolute against where it was written."""
    for section, key in LOCAL_PATH_KEYS:
        if key not in merged.get(section, {}):
            continue
        value, origin = merged[section][key]
        if not isinstance(value, str) or not value or has_scheme(value):
            continue
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            folder = os.getcwd() if origin.startswith("--set ") else os.path.dirname(os.path.abspath(origin))
            path = os.path.join(folder, path)
        merged[section][key] = (os.path.normpath(path), origin)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _merge_file(merged: dict, path: Path, allow_new_keys: bool) -> None:
    for section, values in _read_yaml(path).items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of keys")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown key '{section}.{key}'")
            if not allow_new_keys and key not in merged.get(section, {}):
                raise ConfigError(f"{path}: key '{section}.{key}' has no default in {BASE_FILE_NAME}")
            merged.setdefault(section, {})[key] = (value, str(path))


def _merge_override(merged: dict, override: str) -> None:
    origin = f"--set {override}"
    name, sep, raw = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"{origin}: expected section.key=value")
    if section not in SECTIONS or key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        raise ConfigError(f"{origin}: unknown key '{section}.{key}'")
    field_type = typing.get_type_hints(SECTIONS[section])[key]
    merged.setdefault(section, {})[key] = (_parse_override_value(raw, field_type, origin, name), origin)


def _parse_override_value(raw: str, field_type: type, origin: str, name: str) -> Any:
    """Command-line values are text; read them as the key's type, not as free YAML."""
    if field_type is str:
        return raw
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError(f"{origin}: '{name}' is not a valid value") from None


def _build(merged: dict, sources: tuple[str, ...]) -> Config:
    sections = {}
    for section, cls in SECTIONS.items():
        values = merged.get(section, {})
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name not in values:
                raise ConfigError(f"{BASE_FILE_NAME}: missing key '{section}.{field.name}'")
            value, origin = values[field.name]
            kwargs[field.name] = _coerce(value, hints[field.name], f"{section}.{field.name}", origin)
        sections[section] = cls(**kwargs)
    sections["paths"] = PathsConfig(root=normalize_root(sections["paths"].root))
    for key, relative in under_root_settings(sections, merged):
        check_under_root(key, relative, origin=merged[key.split(".")[0]][key.split(".")[1]][1])
    return Config(**sections, sources=sources)


def under_root_settings(sections: dict, merged: dict) -> list[tuple[str, str]]:
    """(key, value) of every setting that names a place under paths.root."""
    tables = [(f"tables.{f.name}", getattr(sections["tables"], f.name)) for f in dataclasses.fields(TablesConfig)]
    return [*tables, ("nightly.markers", sections["nightly"].markers), ("nightly.lock_file", sections["nightly"].lock_file)]


def check_under_root(key: str, relative: str, origin: str) -> None:
    """ConfigError unless `relative` stays under the root: not absolute, no scheme, no `..`."""
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith("/") or "://" in relative or ".." in parts:
        raise ConfigError(f"{origin}: '{key}' must be a path relative to paths.root without '..', got {relative!r}")


def _coerce(value: Any, expected: type, key: str, origin: str) -> Any:
    def wrong(what: str) -> ConfigError:
        return ConfigError(f"{origin}: '{key}' must be {what}, got {value!r}")

    if expected is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        try:
            return parse_date(str(value))
        except ValueError:
            raise wrong("a date YYYY-MM-DD") from None
    if expected is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if expected is tuple:  # YAML lists, frozen like the rest of the config
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        return tuple(value)
    if expected is dict:
        if not isinstance(value, Mapping):
            raise wrong("a mapping")
        return dict(value)
    raise TypeError(f"config field {key} has unsupported type {expected}")


def parse_date(text: str) -> dt.date:
    """Parse a strict YYYY-MM-DD date (raises ValueError otherwise)."""
    if len(text) != 10:
        raise ValueError(f"not a date YYYY-MM-DD: {text!r}")
    return dt.date.fromisoformat(text)
