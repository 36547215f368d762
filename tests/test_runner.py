"""The one runner behind every entry point: the root's lock between processes (stage
commands and a spark-submitted job), skipping what is done and saying why, rerunning on a
changed config key, input or output, and a new stage as one module plus one list line."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LOCAL_CONF, REPO, content_digest, day_folder, subprocess_env

TINY = ["generate.users=300", "generate.items=120", "generate.categories=6", "generate.days=2",
        "generate.bot_users_per_day=0"]
BIN = Path(sys.executable).parent
DICTIONARIES = ("users", "items", "categories")


def clean_command(root: Path, day: str) -> list[str]:
    command = [str(BIN / "recpipe"), "clean", "--conf", str(LOCAL_CONF), "--date", day, "--set", f"paths.root={root}"]
    for setting in TINY:
        command += ["--set", setting]
    return command


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen, timeout: int = 400) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for_owner(root: Path, pids: set[int], timeout_s: float = 120) -> dict:
    """The owner file once one of `pids` holds the root's lock."""
    owner_file = root / "_nightly.lock.owner"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if owner_file.exists():
            try:
                owner = json.loads(owner_file.read_text())
            except ValueError:
                owner = {}
            if owner.get("pid") in pids:
                return owner
        time.sleep(0.2)
    pytest.fail(f"none of {sorted(pids)} took the lock of {root}")


def dictionaries(root: Path, day: str) -> dict[str, str]:
    from recpipe.config import load_config

    cfg = load_config(LOCAL_CONF, [f"paths.root={root}"])
    return {name: content_digest(day_folder(cfg, f"dim_{name}", dt.date.fromisoformat(day))) for name in DICTIONARIES}


def spark_submit_clean(root: Path, day: str) -> subprocess.CompletedProcess:
    """`spark-submit jobs/clean_events.py` for `day`, as a user would start it by hand."""
    return subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[1]", "jobs/clean_events.py", "--conf", str(LOCAL_CONF),
         "--date", day, "--set", f"paths.root={root}", *[a for s in TINY for a in ("--set", s)]],
        cwd=REPO, env={**subprocess_env(), "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def contested(spark, tmp_path_factory):
    """Root A: two `recpipe clean` for the first day started together and, while the one
    that won holds the lock, `spark-submit jobs/clean_events.py` for the same day; then
    the clean command once more. Root B: the same data, the day cleaned once."""
    from recpipe.config import load_config
    from recpipe.etl import clean
    from recpipe.generate import run as generate

    home = tmp_path_factory.mktemp("contested")
    roots = {"contested": home / "a", "single": home / "b"}
    for root in roots.values():
        manifest = generate(load_config(LOCAL_CONF, [f"paths.root={root}", *TINY]))
    first = sorted(manifest["days"])[0]
    clean.run(spark, load_config(LOCAL_CONF, [f"paths.root={roots['single']}", *TINY]), dt.date.fromisoformat(first))

    pair = [start(clean_command(roots["contested"], first)) for _ in range(2)]
    holder = wait_for_owner(roots["contested"], {process.pid for process in pair})["pid"]
    submitted = spark_submit_clean(roots["contested"], first)
    running = next(process for process in pair if process.pid == holder).poll() is None  # still held it
    racers = [(process.pid, *finish(process)) for process in pair]
    again = subprocess.run(clean_command(roots["contested"], first), cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True, timeout=300)
    return {"roots": roots, "first": first, "racers": racers, "again": again, "holder": holder,
            "submitted": submitted, "held_throughout": running}


@pytest.mark.spark
@pytest.mark.slow
def test_two_clean_commands_at_once_one_runs_the_other_is_refused_naming_the_holder(contested):
    racers = contested["racers"]
    codes = sorted(code for _, code, _, _ in racers)
    assert codes == [0, 2], [err[-2000:] for *_, err in racers]
    (winner, *_), (_, _, _, refusal) = sorted(racers, key=lambda r: r[1])
    assert "another run holds" in refusal and f"'pid': {winner}" in refusal and "clean" in refusal
    assert "Traceback" not in refusal and "SparkContext" not in refusal  # refused before any Spark work


@pytest.mark.spark
@pytest.mark.slow
def test_the_contested_days_dictionaries_equal_a_single_runs(contested):
    first, roots = contested["first"], contested["roots"]
    assert dictionaries(roots["contested"], first) == dictionaries(roots["single"], first)


@pytest.mark.spark
@pytest.mark.slow
def test_a_spark_submitted_job_is_refused_while_a_stage_command_holds_the_lock(contested):
    submitted, holder = contested["submitted"], contested["holder"]
    assert contested["held_throughout"], "the stage command finished before the submitted job was refused"
    assert submitted.returncode == 2
    text = submitted.stdout + submitted.stderr  # spark-submit copies the Python driver's stderr to its stdout
    assert "another run holds" in text and f"'pid': {holder}" in text


@pytest.mark.spark
@pytest.mark.slow
def test_a_stage_command_for_a_finished_date_says_it_skips_and_why(contested):
    again = contested["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout
    assert "clean " + contested["first"] + ": skipping, done at" in again.stderr and "--force reruns" in again.stderr
    assert "SparkContext" not in again.stderr  # nothing to run, so no JVM


@pytest.fixture
def with_toy_stage(monkeypatch):
    """The one line a new stage adds to recpipe.stages."""
    from recpipe import stages

    from tests import toy_stage

    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, toy_stage.STAGE))


def recpipe_main(*args: str) -> int:
    from recpipe.cli import main

    return main(list(args))


def test_a_new_stage_is_a_command_runs_through_the_runner_and_skips_when_done(with_toy_stage, make_config, capsys):
    from recpipe.generate import run as generate

    cfg = make_config(*TINY)
    generate(cfg)
    day = cfg.generate.dates[0].isoformat()
    common = ["--conf", str(LOCAL_CONF), "--set", f"paths.root={cfg.paths.root}", *[a for s in TINY for a in ("--set", s)]]

    def output() -> Path:  # each run commits a new version of the day
        return Path(day_folder(cfg, "recommendations", cfg.generate.dates[0])) / "toy.json"

    marker = Path(cfg.paths.root) / "_markers" / f"dt={day}" / "toy.json"

    def toy(*extra: str) -> str:
        """The summary line and the log of one `recpipe toy` command."""
        capsys.readouterr()
        assert recpipe_main("toy", *common, "--date", day, *extra) == 0
        printed = capsys.readouterr()
        return printed.out.splitlines()[-1] + " | " + printed.err

    assert " ok" in toy() and json.loads(output().read_text())["top_n"] == cfg.score.top_n and marker.exists()
    assert "skipped" in toy()
    rerun = toy("--set", "score.top_n=7")
    assert " ok" in rerun and "config changed: score.top_n" in rerun and json.loads(output().read_text())["top_n"] == 7
    output().unlink()
    assert "output changed: recommendations/dt=" in toy("--set", "score.top_n=7")
    assert "running (--force)" in toy("--set", "score.top_n=7", "--force")
    capsys.readouterr()
    assert recpipe_main("run-stage", "--stage", "toy", *common, "--set", "score.top_n=7", "--date", day) == 0
    assert "skipped" in capsys.readouterr().out
    assert recpipe_main("nightly", *common, "--set", "nightly.stages=[toy]", "--date", day) == 0
    assert "toy" in capsys.readouterr().out


def test_a_missing_required_input_is_named_before_the_stage_runs(with_toy_stage, make_config, capsys):
    cfg = make_config(*TINY)  # nothing generated
    code = recpipe_main("toy", "--conf", str(LOCAL_CONF), "--set", f"paths.root={cfg.paths.root}", "--date",
                        "2026-11-01")
    err = capsys.readouterr().err
    assert code == 2 and "missing input raw_events/dt=2026-11-01" in err
    assert not (Path(cfg.paths.root) / "_markers").exists()


def test_every_declared_stage_is_a_command_and_reads_what_it_declares(make_config):
    from recpipe import stages
    from recpipe.cli import build_parser

    _, commands = build_parser()
    cfg = make_config()
    for stage in stages.STAGES:
        assert stage.name in commands
        assert all(p.table in vars(cfg.tables) for p in stage.reads(cfg, dt.date(2026, 11, 5)))
        assert all(p.table in vars(cfg.tables) for p in stage.writes(cfg, dt.date(2026, 11, 5)))
        for key in stage.config_values(cfg):
            section, name = key.split(".", 1)
            assert name in cfg.to_dict()[section], key
    assert os.path.exists(REPO / "jobs" / "run_stage.py")


def test_a_truncated_marker_is_reported_by_name_and_the_stage_reruns(with_toy_stage, make_config, capsys):
    from recpipe.generate import run as generate

    cfg = make_config(*TINY)
    generate(cfg)
    day = cfg.generate.dates[0].isoformat()
    common = ["--conf", str(LOCAL_CONF), "--set", f"paths.root={cfg.paths.root}", *[a for s in TINY for a in ("--set", s)],
              "--set", "nightly.stages=[toy]", "--date", day]
    marker = Path(cfg.paths.root) / "_markers" / f"dt={day}" / "toy.json"
    assert recpipe_main("nightly", *common) == 0
    whole = marker.read_bytes()
    marker.write_bytes(whole[: len(whole) // 2])  # what a crash in a non-atomic write left behind
    capsys.readouterr()

    assert recpipe_main("nightly", *common) == 0

    err = capsys.readouterr().err
    assert f"the toy marker of {day} {marker} is unreadable" in err and "treating it as absent" in err
    assert f"toy {day}: running" in err
    assert json.loads(marker.read_bytes())["stage"] == "toy"  # written whole again
    assert not list(marker.parent.glob("*.tmp-*"))
