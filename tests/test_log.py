"""What a run's log looks like: one line layout for recpipe, MLflow and Spark, no progress
bars redrawn into a file, no warning per dictionary numbering, and a heartbeat while a
stage runs."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import LOCAL_CONF, REPO, subprocess_env

BIN = Path(sys.executable).parent
TINY = ["generate.users=300", "generate.items=120", "generate.categories=6", "generate.days=1",
        "generate.bot_users_per_day=0"]
# Any of the layouts seen in a log: 2026-11-21 13:45:02, 26/11/21 13:45:02, 2026/11/21 13:45:02.
STARTS_WITH_A_TIME = re.compile(r"^\d{2}(\d{2})?[-/.]\d{1,2}[-/.]\d{1,2}[ T]\d{1,2}:\d{2}")
# The one layout: date, time, level, logger (recpipe.runner; DAGScheduler for Spark), message.
ONE_LAYOUT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (TRACE|DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL) "
                        r"[\w.$-]+: ")


def recpipe(root: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "recpipe"), *args, "--conf", str(LOCAL_CONF), "--set", f"paths.root={root}",
               *[a for s in TINY for a in ("--set", s)]]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def clean_log(tmp_path_factory) -> str:
    """stdout and stderr of `recpipe generate` and `recpipe clean` for the first day, with a
    heartbeat every 2 s; output that is not a terminal, as under cron, Airflow or `make run | tee`."""
    root = tmp_path_factory.mktemp("log") / "root"
    generated = recpipe(root, "generate")
    assert generated.returncode == 0, generated.stderr[-3000:]
    cleaned = recpipe(root, "clean", "--date", "2026-11-01", "--set", "logging.heartbeat_seconds=2")
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    return "".join(p.stdout + p.stderr for p in (generated, cleaned))


@pytest.mark.spark
@pytest.mark.slow
def test_a_clean_logs_every_timed_line_in_one_layout(clean_log):
    timed = [line for line in clean_log.splitlines() if STARTS_WITH_A_TIME.match(line)]
    assert [line for line in timed if not ONE_LAYOUT.match(line)] == []
    assert any(" INFO recpipe.runner: clean 2026-11-01: done in " in line for line in timed)


@pytest.mark.spark
@pytest.mark.slow
def test_a_clean_logs_no_window_warning_and_no_progress_bar(clean_log):
    assert "WindowExec" not in clean_log
    assert "\r" not in clean_log  # neither Spark's console progress nor tqdm redraw into a file
    assert max(len(line) for line in clean_log.splitlines()) < 1000


@pytest.mark.spark
@pytest.mark.slow
def test_a_clean_beats_while_it_runs(clean_log):
    assert re.search(r" INFO recpipe\.heartbeat: clean 2026-11-01: still running \(\d+ s\)", clean_log)


def test_mlflow_imported_before_the_logging_is_set_up_logs_in_the_one_layout_without_bars():
    script = ("import logging, mlflow\nfrom recpipe.logs import setup_logging\nsetup_logging()\n"
              "logging.getLogger('mlflow.tracking').info('a line')\n"
              "from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR\n"
              "print(BAR.get())\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ONE_LAYOUT.match(done.stderr) and done.stderr.rstrip().endswith(" INFO mlflow.tracking: a line")
    assert done.stdout.strip() == "False"  # no artifact progress bars either: this output is not a terminal


def test_a_heartbeat_logs_every_period_until_the_block_ends(caplog):
    from recpipe.heartbeat import heartbeat

    caplog.set_level(logging.INFO, logger="recpipe")
    with heartbeat("sleepy 2026-11-01", 1, lambda: None):
        time.sleep(2.5)
    beats = [r.getMessage() for r in caplog.records if r.name == "recpipe.heartbeat"]
    assert len(beats) >= 2 and all(re.fullmatch(r"sleepy 2026-11-01: still running \(\d s\)", b) for b in beats)
    time.sleep(1.5)
    assert len([r for r in caplog.records if r.name == "recpipe.heartbeat"]) == len(beats)  # stopped with the block


def test_no_heartbeat_when_its_period_is_zero(caplog):
    from recpipe.heartbeat import heartbeat

    caplog.set_level(logging.INFO, logger="recpipe")
    with heartbeat("sleepy 2026-11-01", 0):
        time.sleep(0.2)
    assert not [r for r in caplog.records if r.name == "recpipe.heartbeat"]


@pytest.mark.spark
def test_the_runner_beats_with_the_active_spark_stage_while_a_stage_runs(spark, make_config, caplog):
    from recpipe.runner import DONE, Runner
    from recpipe.stage import Stage

    def sleepy_tasks(batches):  # defined here, so that it travels to the Python workers by value
        time.sleep(2.5)
        yield from batches

    def run(session, cfg, date):
        session.range(2, numPartitions=2).mapInPandas(sleepy_tasks, "id long").count()
        return {}

    stage = Stage(name="sleepy", help="sleeps in two Spark tasks", config=(), reads=lambda cfg, date: [],
                  writes=lambda cfg, date: [], run=run)
    caplog.set_level(logging.INFO, logger="recpipe")
    outcome = Runner(make_config("logging.heartbeat_seconds=1"), "test", spark).run(stage, dt.date(2026, 11, 1))
    assert outcome.status == DONE
    beats = [r.getMessage() for r in caplog.records if r.name == "recpipe.heartbeat"]
    assert len(beats) >= 2 and all(b.startswith("sleepy 2026-11-01: still running (") for b in beats)
    assert any(re.search(r"; Spark stage \d+ \(\w+\): \d+/\d+ tasks done, \d+ running$", b) for b in beats), beats


def test_spark_settings_turn_the_progress_bar_off_in_a_file_and_log4j2_on_for_both_jvms(make_config):
    from recpipe.logs import LOG4J2_PROPERTIES
    from recpipe.spark import session_settings

    settings = session_settings(make_config())  # pytest's stderr is not a terminal
    assert settings["spark.ui.showConsoleProgress"] == "false"
    assert settings["spark.driver.extraJavaOptions"] == f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES}"
    assert settings["spark.executor.extraJavaOptions"] == (f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES} "
                                                           "-Drecpipe.log4j2.level=info")  # a worker's file keeps INFO
    assert "%d{yyyy-MM-dd HH:mm:ss} %p %c{1}: %m%n" in LOG4J2_PROPERTIES.read_text()


def test_spark_extra_still_decides_and_its_java_options_come_after_recpipes(make_config):
    from recpipe.spark import session_settings

    cfg = make_config("spark.extra={spark.ui.showConsoleProgress: 'true', spark.driver.extraJavaOptions: -Da=1}")
    settings = session_settings(cfg)
    assert settings["spark.ui.showConsoleProgress"] == "true"
    assert settings["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")
    assert settings["spark.driver.extraJavaOptions"].endswith(" -Da=1")  # the last -D of a name wins


def test_a_submission_passes_log4j2_with_the_configured_java_options(tmp_path, monkeypatch):
    from recpipe.config import load_config
    from recpipe.submit import submit_command

    monkeypatch.chdir(REPO)
    (tmp_path / "recpipe-0.1.0-py3-none-any.whl").write_bytes(b"")
    cfg = load_config(REPO / "conf" / "cluster.yaml", [f"submit.py_files={tmp_path}/recpipe-*.whl",
                                                      "submit.conf={spark.executor.extraJavaOptions: -Xss4m}"])
    command = submit_command(cfg, "run-stage", "/tmp/conf/base.yaml", ["--stage", "als", "--date", "2026-11-14"])
    options = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in command if arg.startswith("spark.")}
    assert options["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")
    assert options["spark.executor.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")
    assert options["spark.executor.extraJavaOptions"].endswith(" -Xss4m")


@pytest.mark.spark
def test_a_logged_spark_dataset_declares_its_schema_without_mlflows_integer_warning(spark):
    import json

    from recpipe.tracking import spark_dataset

    frame = spark.createDataFrame([(1, 2, [3], 0.5, "a")], "user_idx int, ts long, hist array<int>, w double, s string")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorded = spark_dataset(frame, path="/tmp/somewhere", name="interactions", rows=1).to_dict()
    assert not [w for w in caught if "integer column" in str(w.message)]
    columns = json.loads(recorded["schema"])["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [("user_idx", "integer"), ("ts", "long"), ("hist", "array"),
                                                         ("w", "double"), ("s", "string")]


@pytest.mark.spark
def test_a_logged_spark_dataset_takes_its_row_count_as_given_and_runs_no_spark_job(spark):
    import json

    import mlflow
    from recpipe.tracking import spark_dataset

    frame = spark.range(1000).withColumnRenamed("id", "user_idx")
    tracker, group = spark.sparkContext.statusTracker(), "dataset-profile"
    spark.sparkContext.setJobGroup(group, "the dataset's profile")
    try:
        recorded = spark_dataset(frame, path="/tmp/somewhere", name="interactions", rows=1000).to_dict()
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert json.loads(recorded["profile"]) == {"approx_count": 1000}
    assert tracker.getJobIdsForGroup(group) == []  # MLflow's own profile sends every row through Python
    assert recorded["digest"] == mlflow.data.from_spark(frame, path="/tmp/somewhere").digest
