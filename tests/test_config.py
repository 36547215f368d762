"""Layered, typed configuration: errors name the key and the file they came from."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from recpipe.config import load_config
from recpipe.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def conf_dir(tmp_path):
    """A copy of conf/ that a test may write a profile into."""
    target = tmp_path / "conf"
    shutil.copytree(REPO / "conf", target)
    return target


def write_profile(conf_dir: Path, text: str) -> Path:
    profile = conf_dir / "mine.yaml"
    profile.write_text(text)
    return profile


def test_profiles_layer_over_base_and_set_wins(conf_dir):
    profile = write_profile(conf_dir, "spark:\n  shuffle_partitions: 3\ngenerate:\n  users: 10\n")
    cfg = load_config(profile, ["generate.users=7", "spark.master=local[1]"])
    assert cfg.spark.shuffle_partitions == 3          # from the profile
    assert cfg.generate.users == 7                    # --set beats the profile
    assert cfg.spark.master == "local[1]"
    assert cfg.generate.items == 5000                 # untouched default from base.yaml
    assert cfg.generate.start_date == dt.date(2026, 11, 1)
    assert str(profile) in cfg.sources and "--set generate.users=7" in cfg.sources


@pytest.mark.parametrize("profile", ["base.yaml", "local.yaml", "cluster.yaml"])
def test_shipped_profiles_load(profile):
    cfg = load_config(REPO / "conf" / profile)
    assert Path(cfg.paths.root).is_absolute() or "://" in cfg.paths.root


def test_unknown_key_in_file_names_key_and_file(conf_dir):
    profile = write_profile(conf_dir, "spark:\n  shuffle_partitons: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(profile)
    assert str(profile) in str(err.value) and "spark.shuffle_partitons" in str(err.value)


def test_unknown_section_names_section_and_file(conf_dir):
    profile = write_profile(conf_dir, "sparks:\n  master: local\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*'sparks'"):
        load_config(profile)


@pytest.mark.parametrize(
    "text, key",
    [
        ("spark:\n  shuffle_partitions: many\n", "spark.shuffle_partitions"),
        ("spark:\n  shuffle_partitions: 2.5\n", "spark.shuffle_partitions"),
        ("generate:\n  late_rate: high\n", "generate.late_rate"),
        ("generate:\n  users: true\n", "generate.users"),
        ("spark:\n  extra: [1, 2]\n", "spark.extra"),
        ("paths:\n  root: 12\n", "paths.root"),
        ("generate:\n  start_date: 2026-02-30\n", "generate.start_date"),
    ],
)
def test_wrong_type_names_key_and_file(conf_dir, text, key):
    profile = write_profile(conf_dir, text)
    with pytest.raises(ConfigError) as err:
        load_config(profile)
    assert str(profile) in str(err.value) and f"'{key}'" in str(err.value)


def test_missing_profile_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(missing)


def test_a_profile_without_base_beside_it_layers_over_the_installed_base(tmp_path):
    from recpipe.config import PACKAGED_CONF

    lonely = tmp_path / "lonely.yaml"
    lonely.write_text("spark:\n  master: local\n")
    cfg = load_config(lonely)
    assert cfg.spark.master == "local" and cfg.sources == (str(PACKAGED_CONF / "base.yaml"), str(lonely))
    assert cfg.generate.items == 5000  # a default of the installed base.yaml


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("spark.mastr=local", "unknown key 'spark.mastr'"),
        ("nosuch.key=1", "unknown key 'nosuch.key'"),
        ("generate.users=lots", "'generate.users' must be an integer"),
        ("generate.start_date=2026-13-01", "'generate.start_date' must be a date"),
        ("generate.users", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_override(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "conf" / "local.yaml", [override])
    assert f"--set {override}" in str(err.value) and fragment in str(err.value)


def test_string_override_is_kept_verbatim():
    cfg = load_config(REPO / "conf" / "local.yaml", ["spark.driver_memory=2048", "spark.extra={a.b: 1}"])
    assert cfg.spark.driver_memory == "2048"
    assert cfg.spark.extra == {"a.b": 1}


@pytest.mark.parametrize(
    "root, expected",
    [
        ("s3a://bucket/recpipe/", "s3a://bucket/recpipe/lake/events/dt=2026-11-02"),
        ("hdfs://nn:8020/data", "hdfs://nn:8020/data/lake/events/dt=2026-11-02"),
        ("file:///srv/recpipe", "file:///srv/recpipe/lake/events/dt=2026-11-02"),
        ("/srv/recpipe", "/srv/recpipe/lake/events/dt=2026-11-02"),
    ],
)
def test_roots_may_be_paths_or_uris(root, expected):
    cfg = load_config(REPO / "conf" / "local.yaml", [f"paths.root={root}"])
    assert cfg.table_path("events", dt.date(2026, 11, 2)) == expected


def test_a_relative_root_on_the_command_line_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "conf" / "local.yaml", ["paths.root=./var/x"])
    assert cfg.paths.root == str(tmp_path / "var" / "x")


def test_relative_local_paths_in_a_file_are_taken_from_its_folder_whatever_the_current_directory(tmp_path,
                                                                                                  monkeypatch):
    home = tmp_path / "etc" / "recpipe"
    home.mkdir(parents=True)
    profile = home / "prod.yaml"
    profile.write_text("paths:\n  root: ../../data\nsubmit:\n  jobs_dir: jobs\n  py_files: wheels/recpipe-*.whl\n"
                       "cluster:\n  run_dir: ~/cluster-run\n")
    for cwd in (tmp_path, home, REPO):
        monkeypatch.chdir(cwd)
        cfg = load_config(profile)
        assert cfg.paths.root == str(tmp_path / "data")
        assert (cfg.submit.jobs_dir, cfg.submit.py_files) == (str(home / "jobs"), str(home / "wheels/recpipe-*.whl"))
        assert cfg.cluster.run_dir == str(Path.home() / "cluster-run")


def test_the_checkouts_profiles_write_under_its_var_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(REPO / "conf" / "local.yaml").paths.root == str(REPO / "var" / "recpipe")
    cluster = load_config(REPO / "conf" / "cluster.yaml")
    assert (cluster.paths.root, cluster.cluster.run_dir) == (str(REPO / "var" / "recpipe-cluster"),
                                                              str(REPO / "var" / "cluster"))
    assert cluster.submit.jobs_dir == str(REPO / "jobs")


def test_unknown_table_name_is_an_error():
    cfg = load_config(REPO / "conf" / "local.yaml")
    with pytest.raises(ConfigError, match="unknown table 'evnts'"):
        cfg.table_path("evnts")


def test_every_base_key_has_a_comment():
    for number, line in enumerate((REPO / "conf" / "base.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if line.startswith("  ") and stripped and not stripped.startswith("#"):
            assert "#" in line or stripped.endswith(":"), f"base.yaml:{number} has no comment: {line!r}"


def test_a_sub_table_of_a_day_puts_the_day_where_its_path_says(make_config):
    cfg = make_config()
    day = dt.date(2026, 11, 14)
    assert cfg.table_path("als_candidates", day) == f"{cfg.paths.root}/lake/als/dt=2026-11-14/candidates"
    assert cfg.table_path("ranker_input_test", day) == f"{cfg.paths.root}/lake/ranker_input/dt=2026-11-14/split=test"
    assert cfg.table_path("events", day) == f"{cfg.paths.root}/lake/events/dt=2026-11-14"
    with pytest.raises(ConfigError, match="tables.als_candidates: a sub-table of one day"):
        cfg.table_path("als_candidates")


@pytest.mark.parametrize("override", ["tables.events=/etc", "tables.events=../x", "tables.rejects=lake/../../x",
                                      "tables.als=s3a://bucket/als", "nightly.markers=/tmp/markers",
                                      "nightly.lock_file=../lock"])
def test_a_table_marker_or_lock_outside_the_root_is_a_config_error_naming_the_key(make_config, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}' must be a path relative to paths.root"):
        make_config(override)


def test_a_second_root_in_one_process_gets_its_own_tracking_store(make_config, tmp_path):
    """mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; the next config's store must
    not be read from that variable (it names the first root's store)."""
    import os

    import mlflow
    from recpipe.tracking import tracking_uri

    first, second = make_config(root=tmp_path / "first"), make_config(root=tmp_path / "second")
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        mlflow.set_tracking_uri(tracking_uri(first))
        assert os.environ["MLFLOW_TRACKING_URI"] == tracking_uri(first)  # what MLflow does
        assert tracking_uri(second) == f"sqlite:///{tmp_path / 'second' / 'mlflow' / 'mlflow.db'}"
    finally:
        mlflow.set_tracking_uri(before[0])
        if before[1] is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
