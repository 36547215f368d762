"""The `recpipe` console script: help, exit codes and one-line reasons."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recpipe.cli import date_arg

REPO = Path(__file__).resolve().parent.parent
RECPIPE = Path(sys.executable).parent / "recpipe"


def recpipe(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    assert RECPIPE.exists(), f"console script missing at {RECPIPE}: run `make setup`"
    return subprocess.run([str(RECPIPE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_help_lists_subcommands():
    result = recpipe("--help")
    assert result.returncode == 0
    assert "generate" in result.stdout and "show-config" in result.stdout


@pytest.mark.parametrize("command", ["generate", "show-config", "locations"])
def test_each_subcommand_has_help(command):
    result = recpipe(command, "--help")
    assert result.returncode == 0 and "--conf" in result.stdout and "--set" in result.stdout


def test_unknown_key_exits_nonzero_with_one_line_naming_it():
    result = recpipe("show-config", "--set", "spark.mastr=local")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "spark.mastr" in lines[0]


def test_missing_conf_file_exits_nonzero_naming_it(tmp_path):
    result = recpipe("show-config", "--conf", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0 and "absent.yaml" in result.stderr


def test_show_config_prints_resolved_values():
    result = recpipe("show-config", "--conf", "conf/local.yaml", "--set", "generate.users=123")
    assert result.returncode == 0
    assert "users: 123" in result.stdout and "root: " + str(REPO / "var" / "recpipe") in result.stdout


def test_from_another_directory_the_cli_uses_the_installed_defaults_or_the_named_profile(tmp_path):
    import yaml

    assert recpipe("--version", cwd=tmp_path).stdout.strip().startswith("recpipe ")
    default = yaml.safe_load(recpipe("show-config", cwd=tmp_path).stdout)
    assert default["paths"]["root"] == str(Path.home() / ".local" / "share" / "recpipe")
    named = recpipe("show-config", "--conf", str(REPO / "conf" / "local.yaml"), cwd=tmp_path)
    assert yaml.safe_load(named.stdout)["paths"]["root"] == str(REPO / "var" / "recpipe")
    from_variable = subprocess.run([str(RECPIPE), "show-config"], cwd=tmp_path, capture_output=True, text=True,
                                   timeout=120, env={**os.environ, "RECPIPE_CONF": str(REPO / "conf" / "cluster.yaml")})
    assert yaml.safe_load(from_variable.stdout)["spark"]["master"] == "spark://127.0.0.1:7077"


@pytest.mark.parametrize("text", ["2026-02-30", "2026-1-5", "20261105", "yesterday"])
def test_dates_are_validated(text):
    with pytest.raises(argparse.ArgumentTypeError):
        date_arg(text)


def test_valid_date_parses():
    assert date_arg("2026-11-14").isoformat() == "2026-11-14"


def test_generate_writes_logs_catalogue_truth_and_manifest(tmp_path):
    import json

    result = recpipe("generate", "--conf", "conf/local.yaml", "--set", f"paths.root={tmp_path}",
                     "--set", "generate.users=300", "--set", "generate.items=120", "--set", "generate.days=2")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert sorted(manifest["days"]) == ["2026-11-01", "2026-11-02"]
    for day in manifest["days"]:
        assert list((tmp_path / "raw" / "events" / f"dt={day}").glob("part-*.json.gz"))
    assert list((tmp_path / "raw" / "items").glob("*.jsonl.gz"))
    assert list((tmp_path / "truth").rglob("*.parquet"))
    assert "generate" in result.stderr and "lines" in result.stderr  # the log line names the stage


@pytest.mark.spark
def test_clean_range_cleans_the_days_in_one_job_and_then_skips_them(tmp_path):
    """What `make run` uses for the days before D's nightly: the range in one Spark job,
    every day's events committed, one dictionary snapshot dated the last day; a second
    call finds the days cleaned and starts no Spark job."""
    from recpipe import io
    from recpipe.config import load_config

    sets = ["--set", f"paths.root={tmp_path}", "--set", "generate.users=300", "--set", "generate.items=120",
            "--set", "generate.days=3"]
    assert recpipe("generate", "--conf", "conf/local.yaml", *sets).returncode == 0
    first = recpipe("clean-range", "--conf", "conf/local.yaml", *sets, "--start", "2026-11-01", "--end", "2026-11-03")
    assert first.returncode == 0, first.stderr[-3000:]
    assert " ok (2026-11-01..2026-11-03)" in first.stdout
    cfg = load_config(REPO / "conf" / "local.yaml", [s for s in sets if s != "--set"])
    days = [dt.date(2026, 11, d) for d in (1, 2, 3)]
    assert all(io.table_exists(cfg, "events", d) for d in days)
    assert io.latest_day(cfg, "dim_users", days[-1]) == days[-1] and io.latest_day(cfg, "dim_users", days[1]) is None
    again = recpipe("clean-range", "--conf", "conf/local.yaml", *sets, "--start", "2026-11-01", "--end", "2026-11-03")
    assert again.returncode == 0 and " skipped (2026-11-01..2026-11-03)" in again.stdout
    assert "SparkContext" not in again.stderr
