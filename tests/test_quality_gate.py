"""The data-quality gate: its checks on reports, its settings, and the nightly it stops.

The nightly tests run the real nightly (`recpipe nightly` through `cli.main`) on a small
generated lake whose day D is then damaged three ways: 10% of its lines, 30% malformed
lines, an empty day folder. Each stops before features with exit code 2 and leaves MLflow
(apart from D's own clean run) and the registry as they were; `--accept-quality` goes on.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from recpipe import io
from recpipe.config import load_config
from recpipe.errors import ConfigError
from recpipe.etl.gate import check_settings, failed_checks
from recpipe.schema import REJECT_REASONS

from tests.conftest import LOCAL_CONF

SETTINGS = load_config(LOCAL_CONF).quality_gate
TYPES = {"impression": 800, "click": 150, "add_to_cart": 30, "purchase": 10, "rating": 0}


def report(lines=1000, rejected=None, types=None, quarantined=0, date="2026-11-08") -> dict:
    by_reason = {reason: 0 for reason in REJECT_REASONS} | (rejected or {})
    return {"date": date, "lines_read": lines, "rejected_by_reason": by_reason, "accepted_by_type": types or TYPES,
            "quarantined_files": [{"file": f"raw/part-{i}.json.gz"} for i in range(quarantined)]}


USUAL = [report(lines) for lines in (950, 1000, 1080)]


def test_a_usual_day_passes_and_the_first_day_needs_no_history():
    assert failed_checks(report(1020, {"bot_traffic": 200, "malformed_json": 3}), USUAL, SETTINGS) == []
    assert failed_checks(report(5), [], SETTINGS) == []  # no trailing days: nothing to compare with


@pytest.mark.parametrize("day, expected", [
    (report(100), "line count 100 is 0.10 x the median 1,000 of the last 3 days (allowed 0.5..2.0)"),
    (report(2500), "line count 2,500 is 2.50 x the median 1,000"),
    (report(1000, {"malformed_json": 300}), "malformed_json rejects 300 are 30.0% of 1,000 lines (allowed 5.0%)"),
    (report(0, types={k: 0 for k in TYPES}), "empty raw day: 0 lines read"),
    (report(types={**TYPES, "purchase": 0}), "event types missing (seen on each of the last 3 days): purchase"),
    (report(types={**TYPES, "rating": 7}), "new event types (on none of the last 3 days): rating"),
    (report(quarantined=2), "2 raw file(s) quarantined (allowed 0): part-0.json.gz, part-1.json.gz"),
])
def test_each_check_names_itself_and_its_numbers(day, expected):
    failures = failed_checks(day, USUAL, SETTINGS)
    assert len(failures) == 1 and failures[0].startswith(expected), failures


def test_a_range_report_is_not_a_usual_day():
    from recpipe.etl.gate import covers_one_day

    assert covers_one_day(report()) and not covers_one_day({**report(), "first_date": "2026-11-01"})


@pytest.mark.parametrize("override, message", [
    ("quality_gate.max_reject_share={malformed_json: 0.1}", "must give every reject reason"),
    ("quality_gate.max_reject_share={" + ", ".join(f"{r}: 0.1" for r in REJECT_REASONS) + ", typo: 1}", "unknown: ['typo']"),
    ("quality_gate.max_reject_share={" + ", ".join(f"{r}: 1.5" for r in REJECT_REASONS) + "}", "must be a share in 0..1"),
    ("quality_gate.min_line_ratio=1.5", "need 0 <= min_line_ratio <= 1 <= max_line_ratio"),
    ("quality_gate.trailing_days=0", "trailing_days must be at least 1"),
])
def test_settings_that_cannot_mean_anything_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_settings(load_config(LOCAL_CONF, [override]).quality_gate)


# --- the nightly it stops ---------------------------------------------------------------------

DATA = ["generate.users=300", "generate.items=120", "generate.categories=6", "generate.days=5",
        "generate.bot_users_per_day=1", "generate.bot_events_per_hour=400", "features.train_days=2",
        "features.min_files_per_split=1", "clean.bot_max_events_per_window=40"]


def nightly_args(root: Path, date, *extra: str) -> list[str]:
    args = ["nightly", "--conf", str(LOCAL_CONF), "--date", date.isoformat(), "--set", f"paths.root={root}"]
    for setting in DATA:
        args += ["--set", setting]
    return args + list(extra)


def mlflow_state(cfg) -> tuple[set, list]:
    """Every run as (experiment, run name, stage tag), and the registered models."""
    import mlflow
    from recpipe.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg))
    runs = {(exp.name, r.info.run_id, r.info.run_name, r.data.tags.get("stage"))
            for exp in client.search_experiments() for r in client.search_runs([exp.experiment_id])}
    return runs, [m.name for m in client.search_registered_models()]


def raw_lines(folder: Path) -> list[str]:
    return [line for part in sorted(folder.glob("*.json.gz")) for line in gzip.open(part, "rt").read().splitlines()]


def replace_raw_day(folder: Path, lines: list[str]) -> None:
    shutil.rmtree(folder)
    folder.mkdir()
    if lines:
        with gzip.open(folder / "part-00000.json.gz", "wt") as out:
            out.write("".join(f"{line}\n" for line in lines))


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """A generated lake whose days before D are cleaned one by one, as earlier nightlies did."""
    from recpipe.etl import clean
    from recpipe.generate import run as generate

    root = tmp_path_factory.mktemp("gate") / "root"
    cfg = load_config(LOCAL_CONF, [f"paths.root={root}", *DATA])
    generate(cfg)
    days = cfg.generate.dates
    for day in days[:-1]:
        clean.run(spark, cfg, day)
    D = days[-1]
    return cfg, D, Path(cfg.table_path("raw_events", D)), raw_lines(Path(cfg.table_path("raw_events", D)))


@pytest.mark.spark
@pytest.mark.generate
@pytest.mark.slow
@pytest.mark.parametrize("damage, check", [
    (lambda lines: lines[: len(lines) // 10], "line count"),
    (lambda lines: lines[: int(len(lines) * 0.7)] + ["{not json"] * int(len(lines) * 0.3), "malformed_json rejects"),
    (lambda lines: [], "empty raw day"),
], ids=["tenth-of-the-lines", "thirty-percent-malformed", "empty-day-folder"])
def test_a_bad_day_stops_the_nightly_before_features_with_exit_2(lake, capsys, damage, check):
    from recpipe import cli
    from recpipe.markers import read_marker

    cfg, D, folder, good = lake
    replace_raw_day(folder, damage(good))
    runs_before, models_before = mlflow_state(cfg)

    assert cli.main(nightly_args(Path(cfg.paths.root), D)) == 2

    err = capsys.readouterr().err
    assert f"quality gate failed for {D}: {check}" in err and "--accept-quality" in err
    assert read_marker(cfg, D, "clean") is not None and read_marker(cfg, D, "quality") is None
    assert read_marker(cfg, D, "features") is None and io.location(cfg, "samples", D) is None
    runs_after, models_after = mlflow_state(cfg)
    new = runs_after - runs_before
    assert {run[3] for run in new if run[0] != "recpipe-nightly"} == {"clean"}  # only D's clean run, before the gate
    [nightly_run] = [run for run in new if run[0] == "recpipe-nightly"]  # and the night's seconds, which say so
    assert nightly_run[2] == f"nightly-{D}"
    assert models_after == models_before


@pytest.mark.spark
@pytest.mark.generate
@pytest.mark.slow
def test_accept_quality_goes_on_past_a_failed_gate_and_mlflow_records_it(lake, capsys):
    import mlflow
    from recpipe import cli
    from recpipe.markers import read_marker
    from recpipe.tracking import tracking_uri

    cfg, D, folder, good = lake
    replace_raw_day(folder, good[: len(good) // 10])
    args = nightly_args(Path(cfg.paths.root), D, "--set", "nightly.stages=[clean, quality, features]")

    assert cli.main([*args, "--accept-quality"]) == 0

    out = capsys.readouterr().out
    assert "accepted: line count" in out
    assert read_marker(cfg, D, "features") is not None
    client = mlflow.MlflowClient(tracking_uri(cfg))
    [run] = client.search_runs([client.get_experiment_by_name("recpipe-etl").experiment_id],
                               f"tags.quality_gate = 'accepted' and tags.date = '{D}'")
    assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quality_gate.json")["failed_checks"][0].startswith(
        "line count")
    # The acceptance holds for D while its inputs stay the same: a plain rerun skips the gate.
    assert cli.main(args) == 0
    assert "quality" in capsys.readouterr().out
