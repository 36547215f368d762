"""The features stage: point-in-time user and item features, behaviour sequences and
leak-free ranker samples, all as of day D (cut-off D 00:00 UTC).

Inputs are the clean events (selected by `ts`, never by `dt`: late events of a day arrive
in the next day's file) and the newest catalogue snapshot on or before each day.
Only partitions `dt <= D` are read, so D's outputs depend on nothing written after D's
clean ran and a rerun or backfill of D reproduces them exactly.

The transforms are in `activity` (dense features) and `sequences`/`samples`; this module
holds the stage: its I/O, settings checks, `run` and declaration.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import io, paths, tables
from recpipe.config import Config, FeaturesConfig
from recpipe.errors import ConfigError, DataError
from recpipe.etl import samples as S
from recpipe.etl.activity import (
    FROM_DAY,
    TO_DAY,
    active_before,
    build_item_features,
    build_user_features,
    daily_activity,
    daily_category_counts,
    favourite_categories,
    impression_category_shares,
    item_features_as_of,
    user_features_as_of,
    with_category_shares,
)
from recpipe.etl.catalogue import brand_column
from recpipe.etl.feature_names import item_dense_names, user_dense_names
from recpipe.etl.sequences import (
    DAY_MS,
    EVENT_DAY,
    build_user_sequences,
    day_start_ms,
    epoch_day,
    select_interactions,
    with_event_time,
)
from recpipe.schema import (
    CAT_IDX,
    DT,
    EVENT_ID,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_DENSE,
    ITEM_IDX,
    POSITION,
    PRICE,
    REQUEST_ID,
    SPLIT,
    TS,
    TS_MS,
    USER_DENSE,
    USER_IDX,
    require_columns,
)
from recpipe.spark import persist
from recpipe.stage import Partition, Stage, days, total

log = logging.getLogger("recpipe.features")

EVENT_COLUMNS = (EVENT_ID, USER_IDX, ITEM_IDX, EVENT_TYPE, TS, REQUEST_ID, POSITION)
CATALOGUE_COLUMNS = (ITEM_IDX, CAT_IDX, PRICE)


def read_events(spark: SparkSession, cfg: Config, first_day: dt.date, date: dt.date, until_ms: int) -> DataFrame:
    """Events with `ts` in [first_day 00:00, until_ms) from the partitions dt first_day..date.

    An event is in its own day's file or, late, in the next one's, so no partition before
    `first_day` can hold a wanted event. Partitions after `date` are not read, so that the
    outputs for `date` never change once they are written.
    """
    events = io.read_days(spark, cfg, "events", first_day, date)
    require_columns(events, EVENT_COLUMNS, "features: events table")
    since = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.timezone.utc)
    until = dt.datetime.fromtimestamp(until_ms / 1000, tz=dt.timezone.utc)
    return (
        events
        .where((F.col(TS) >= F.lit(since)) & (F.col(TS) < F.lit(until)))
        .select(*EVENT_COLUMNS)
        .transform(with_event_time)
    )


def read_catalogue_days(spark: SparkSession, cfg: Config, days: list[dt.date]) -> DataFrame:
    """The catalogue snapshot that applies to each of `days`: the newest one on or before it.

    Returns:
        One row per item and snapshot: `item_idx`, `cat_idx`, `price` and the span of
        epoch days it applies to, `_from_day`..`_to_day` (spans, not a row per day: a
        whole history is thousands of days); days before the first snapshot are absent.

    Raises:
        DataError: when no snapshot exists on or before the last day.
    """
    snapshots = io.partition_days(cfg, "catalogue")
    snapshot_of = {day: io.newest_on_or_before(snapshots, day) for day in days}
    if snapshot_of[max(days)] is None:
        raise DataError(f"table 'catalogue' has no snapshot on or before {max(days)} at {cfg.table_path('catalogue')}")
    frames = []
    for snapshot in sorted({s for s in snapshot_of.values() if s is not None}):
        covered = [epoch_day(day) for day, s in snapshot_of.items() if s == snapshot]  # consecutive days
        catalogue = io.read_day(spark, cfg, "catalogue", snapshot)
        require_columns(catalogue, CATALOGUE_COLUMNS, f"features: catalogue snapshot {snapshot}")
        frames.append(
            catalogue
            .select(ITEM_IDX, CAT_IDX, F.col(PRICE).cast("double").alias(PRICE),
                    F.lit(min(covered)).alias(FROM_DAY), F.lit(max(covered)).alias(TO_DAY))
        )
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def read_item_categories(spark: SparkSession, cfg: Config, date: dt.date) -> DataFrame:
    """`item_idx`, `cat_idx`, `brand_idx` of the newest catalogue snapshot on or before `date`."""
    snapshot = io.latest_day(cfg, "catalogue", date)
    if snapshot is None:
        raise DataError(f"table 'catalogue' has no snapshot on or before {date} at {cfg.table_path('catalogue')}")
    catalogue = io.read_day(spark, cfg, "catalogue", snapshot)
    return catalogue.select(ITEM_IDX, CAT_IDX, brand_column(catalogue))


def write_table(frame: DataFrame, cfg: Config, name: str, date: dt.date, files: int) -> int:
    """Write one day of a table (replacing only that day) and return its row count.

    The first day of a data set has nothing before its cut-off: the day is then absent.
    """
    io.write_day(frame, cfg, name, date, files)
    location = io.location(cfg, name, date)
    return count_rows(location) if location else 0


def count_rows(location: str) -> int:
    """Rows of a written Parquet folder, from the file footers alone (no Spark job)."""
    import pyarrow.dataset as pads

    fs, path = paths.filesystem_for(location)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def check_config(fc: FeaturesConfig) -> None:
    """Raise ConfigError naming the `features.*` key whose value cannot work."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"features.{key}: {why}")

    if fc.history_length < 1:
        raise bad("history_length", "must be at least 1")
    unknown = set(fc.history_event_types) - set(EVENT_TYPES)
    if unknown or "impression" in fc.history_event_types or not fc.history_event_types:
        raise bad("history_event_types",
                  f"must be a non-empty subset of {EVENT_TYPES[1:]}, got {fc.history_event_types}")
    if not fc.windows_days or any(not isinstance(w, int) or w < 1 for w in fc.windows_days):
        raise bad("windows_days", "must be a non-empty list of positive whole days")
    if len(set(fc.windows_days)) != len(fc.windows_days):
        raise bad("windows_days", "has a repeated window")
    if fc.lookback_days < 1:
        raise bad("lookback_days", "must be at least 1")
    if fc.top_categories < 1:
        raise bad("top_categories", "must be at least 1")
    if fc.train_days < 0:
        raise bad("train_days", "must not be negative")
    if fc.eval_split not in S.EVAL_SPLITS:
        raise bad("eval_split", f"must be one of {', '.join(S.EVAL_SPLITS)}, got {fc.eval_split!r}")
    if not 0.0 <= fc.valid_share <= 1.0:
        raise bad("valid_share", "must be between 0 and 1")
    if not 0.0 <= fc.holdout_share < 1.0:
        raise bad("holdout_share", "must be at least 0 and below 1 (someone must train)")
    if not 0.0 < fc.negative_sampling_rate <= 1.0:
        raise bad("negative_sampling_rate", "must be in (0, 1]")
    for key in ("row_group_mb", "max_records_per_file", "min_files_per_split", "files_per_day", "attribution_minutes"):
        if getattr(fc, key) < 1:
            raise bad(key, "must be at least 1")


def check_eval_days(days: int) -> int:
    if days < 1:
        raise ConfigError(f"evaluation.days must be at least 1, got {days}")
    return days


def sample_days(cfg: Config, date: dt.date) -> list[dt.date]:
    """The days whose impressions become samples: the train days before D, then the
    evaluation days from D on."""
    train_start = date - dt.timedelta(days=cfg.features.train_days)
    return [train_start + dt.timedelta(days=i) for i in range(cfg.features.train_days + cfg.evaluation.days)]


def event_days(cfg: Config, date: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last `dt=` of events read: back to the look-back (or the longest
    window) before the first sample day, up to the last sample day (its late events and
    clicks within the attribution window are in its own or the next file)."""
    fc = cfg.features
    sampled = sample_days(cfg, date)
    return sampled[0] - dt.timedelta(days=max(fc.lookback_days, *fc.windows_days)), sampled[-1]


@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Build the features, sequences and ranker samples as of `date` and write them.

    Returns:
        Rows written per output (`user_features`, `item_features`, `sequences`) and per
        samples split (`samples`: {train, valid, test}).
    """
    fc = cfg.features
    check_config(fc)
    eval_days = check_eval_days(cfg.evaluation.days)
    windows = tuple(fc.windows_days)
    cutoff_day, cutoff_ms = epoch_day(date), day_start_ms(date)
    eval_end_ms = cutoff_ms + eval_days * DAY_MS  # valid/test: [D, D + evaluation.days)
    train_start = date - dt.timedelta(days=fc.train_days)
    first_day, last_day = event_days(cfg, date)
    # Interactions, impressions, daily activity and labels all scan the events: read them once.
    events = read_events(spark, cfg, first_day, last_day, until_ms=eval_end_ms + fc.attribution_minutes * 60_000)
    events = persist(events, cfg)
    kept = [events]  # what the stage persisted: unpersisted however it ends
    try:
        catalogue_days = read_catalogue_days(spark, cfg, sample_days(cfg, date))
        # Categories come from D's snapshot for candidates and histories alike, so that the
        # attention compares like with like; prices follow each day's snapshot.
        item_categories = read_item_categories(spark, cfg, date)

        interactions = select_interactions(
            events.where(F.col(TS_MS) < eval_end_ms), item_categories, fc.history_event_types)
        impressions = S.select_impressions(events, day_start_ms(train_start), eval_end_ms)
        # Features are never asked as of a day after D, so day D's own activity is never summed.
        before_cutoff = events.where(F.col(TS_MS) < cutoff_ms)
        daily_users = daily_activity(before_cutoff, USER_IDX, fc.history_event_types)
        daily_items = daily_activity(before_cutoff, ITEM_IDX, fc.history_event_types)
        user_targets = active_before(daily_users, USER_IDX, cutoff_day, fc.lookback_days)
        item_targets = (
            active_before(daily_items, ITEM_IDX, cutoff_day, fc.lookback_days)
            .unionByName(item_categories.select(ITEM_IDX).withColumn(EVENT_DAY, F.lit(cutoff_day)))
        )

        # One window pass each serves day D (the tables) and every impression's day (the
        # samples); persisted because both read them.
        user_days = user_targets.unionByName(impressions.select(USER_IDX, EVENT_DAY)).distinct()
        user_asof = user_features_as_of(daily_users, user_days, windows, fc.lookback_days)
        categories = category_count(item_categories) if fc.category_shares else 0
        if categories:
            shown = before_cutoff.where(F.col(EVENT_TYPE) == "impression")
            shares = impression_category_shares(daily_category_counts(shown, item_categories, categories), user_days,
                                                categories, fc.lookback_days)
            user_asof = with_category_shares(user_asof, shares, categories)
        user_asof = persist(user_asof, cfg)
        kept.append(user_asof)
        item_asof = item_features_as_of(
            daily_items,
            item_targets.unionByName(impressions.select(ITEM_IDX, EVENT_DAY)).distinct(),
            catalogue_days,
            windows,
            fc.lookback_days,
        )
        item_asof = persist(item_asof, cfg)
        kept.append(item_asof)
        favourites = favourite_categories(interactions, cutoff_ms, max(windows), fc.top_categories)
        users = build_user_features(user_asof, user_targets, favourites, cutoff_day, windows, fc.top_categories)
        sequences = build_user_sequences(interactions, history_length=fc.history_length, cutoff_ms=cutoff_ms)
        summary = {
            "user_features": write_table(users, cfg, "user_features", date, fc.files_per_day),
            "item_features": write_table(build_item_features(item_asof, cutoff_day, windows), cfg, "item_features",
                                         date, fc.files_per_day),
            "sequences": write_table(sequences, cfg, "sequences", date, fc.files_per_day),
        }
        samples = S.build_samples(
            impressions,
            events.where(F.col(TS_MS) >= day_start_ms(train_start)),  # clicks that can label an impression
            interactions,
            user_asof.select(USER_IDX, EVENT_DAY, USER_DENSE),
            item_asof.select(ITEM_IDX, EVENT_DAY, ITEM_DENSE),
            item_categories,
            date=date,
            train_start_ms=day_start_ms(train_start),
            cutoff_ms=cutoff_ms,
            eval_end_ms=eval_end_ms,
            history_length=fc.history_length,
            attribution_minutes=fc.attribution_minutes,
            eval_split=fc.eval_split,
            valid_share=fc.valid_share,
            holdout_share=fc.holdout_share,
            negative_sampling_rate=fc.negative_sampling_rate,
            seed=fc.sampling_seed,
        )
        summary["samples"] = write_samples_and_meta(samples, cfg, date, windows, categories)
    finally:
        for frame in kept:
            frame.unpersist()
    log.info("features as of %s: %s", date, summary)
    return summary


def category_count(item_categories: DataFrame) -> int:
    """C, the largest category index of the catalogue: the width of the category shares."""
    return int(item_categories.agg(F.max(CAT_IDX)).first()[0] or 0)


def write_samples_and_meta(samples: DataFrame, cfg: Config, date: dt.date, windows: tuple,
                           categories: int = 0) -> dict[str, int]:
    """Count the samples per split and write the splits (`write_counted_splits`), then
    `_meta.json` beside them.

    Returns:
        Rows per split.
    """
    fc = cfg.features
    columns = {f.name: f.dataType.simpleString() for f in samples.schema.fields if f.name not in (DT, SPLIT)}
    rows, positives, files = S.write_counted_splits(samples, cfg, date)
    S.write_meta(cfg, date, {
        "date": date.isoformat(),
        "columns": columns,
        # Petastorm's torch DataLoader refuses string columns: read with schema_fields=these.
        "tensor_columns": [name for name in S.SAMPLE_COLUMNS if name != EVENT_ID],
        "history_length": fc.history_length,
        "history_event_types": list(fc.history_event_types),
        "user_dense_features": user_dense_names(windows, categories),
        "item_dense_features": item_dense_names(windows),
        "attribution_minutes": fc.attribution_minutes,
        # [first day, D]: train is the days before D, valid/test the evaluation days from D on.
        "train_window": [(date - dt.timedelta(days=fc.train_days)).isoformat(), date.isoformat()],
        "eval_days": cfg.evaluation.days,
        "eval_split": fc.eval_split,
        "valid_share": fc.valid_share,
        "holdout_share": fc.holdout_share,
        "negative_sampling_rate": fc.negative_sampling_rate,
        "sampling_seed": fc.sampling_seed,
        "rows": rows,
        "positives": positives,
        "files": files,
        "row_group_mb": fc.row_group_mb,
    })
    return rows


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """The events of `event_days`, and the catalogue snapshots that apply to the sample days."""
    snapshots = sorted({s for day in sample_days(cfg, date) if (s := io.latest_day(cfg, "catalogue", day))})
    return [
        *days("events", *event_days(cfg, date)),
        *[Partition("catalogue", day) for day in snapshots],
        Partition("catalogue", snapshots[-1] if snapshots else date, required=True),
    ]


def writes(cfg: Config, date: dt.date) -> list[Partition]:
    return [Partition(table, date) for table in ("user_features", "item_features", "sequences", "samples")]


STAGE = Stage(
    name="features",
    help="build features, behaviour sequences and ranker samples as of day D",
    config=("features", "evaluation.days"),
    reads=reads,
    writes=writes,
    run=run,
    rows=lambda summary: (None, total(summary.get("samples"))),
)
