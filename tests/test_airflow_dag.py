"""The Airflow DAG under Airflow 3: it parses, its tasks are the declared stages in order,
each submits `jobs/run_stage.py` (so it goes through the runner: a task for a finished
stage is a skip), its paths come from Variables, and a backfill cannot move champion.

Airflow is not part of the pinned stack, so it lives in a virtualenv of its own under
`.venv/` named by a hash of its pins: the first run of a fresh environment installs it
(a few minutes), later runs reuse it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import LOCAL_CONF, REPO, subprocess_env

PINS = ("apache-airflow==3.3.2", "apache-airflow-providers-apache-spark==6.3.4")
VENV = Path(sys.prefix) / f"airflow-{hashlib.sha256(' '.join(PINS).encode()).hexdigest()[:12]}"
DAY = "2026-11-02"  # the trigger day; the tasks process the day before
TINY = ["generate.users=300", "generate.items=120", "generate.categories=6", "generate.days=2"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def airflow_python() -> str:
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True, timeout=1800)
        (VENV / ".installed").touch()
    return str(python)


RENDER = textwrap.dedent("""
    import json, sys, types
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time import macros

    bag = DagBag("conf/airflow")
    dag = bag.dags["recpipe_nightly"]
    variables = json.loads(sys.argv[1])
    rendered = {}
    for task in dag.tasks:
        if task.task_type != "SparkSubmitOperator":
            continue
        task.render_template_fields({"ds": sys.argv[2], "macros": macros, "var": {"value": variables}})
        rendered[task.task_id] = {"application": task.application, "args": task.application_args,
                                  "py_files": task.py_files, "name": task.name, "conf": task.conf}
    gate = dag.get_task("promotion_allowed")
    print(json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "order": [t.task_id for t in dag.topological_sort()],
        "promote_upstream": sorted(dag.get_task("promote").upstream_task_ids),
        "backfill_promotes": gate.python_callable(dag_run=types.SimpleNamespace(run_type="backfill")),
        "scheduled_promotes": gate.python_callable(dag_run=types.SimpleNamespace(run_type="scheduled")),
        "timetable": type(dag.timetable).__name__,
        "max_active_runs": dag.max_active_runs,
        "rendered": rendered,
    }))
""")


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    variables = {"recpipe_home": str(REPO), "recpipe_conf": "conf/local.yaml"}
    env = {**subprocess_env(), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "false"}
    done = subprocess.run([airflow_python(), "-c", RENDER, json.dumps(variables), DAY], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_dag_parses_with_the_declared_stages_in_order(parsed):
    from recpipe import stages

    assert parsed["errors"] == {}
    assert [t for t in parsed["order"] if t != "promotion_allowed"] == stages.names()
    assert parsed["promote_upstream"] == ["promotion_allowed"]
    assert parsed["timetable"] == "CronTriggerTimetable" and parsed["max_active_runs"] == 1


def test_every_task_submits_the_runner_entry_for_its_stage_and_the_day_before(parsed):
    for stage, task in parsed["rendered"].items():
        assert task["application"] == f"{REPO}/jobs/run_stage.py"
        assert task["args"] == ["--conf", f"{REPO}/conf/local.yaml", "--stage", stage, "--date", "2026-11-01"]
        assert task["py_files"] == f"{REPO}/dist/recpipe-0.1.0-py3-none-any.whl" and task["name"] == f"recpipe-{stage}"
        assert task["conf"]["spark.archives"] == f"{REPO}/dist/env.tar.gz#env"
        assert "/opt/" not in json.dumps(task)


def test_a_backfill_cannot_move_champion_a_scheduled_run_can(parsed):
    assert parsed["backfill_promotes"] is False and parsed["scheduled_promotes"] is True


@pytest.mark.spark
def test_the_clean_task_runs_through_the_runner_and_its_retry_is_a_skip(parsed, tmp_path):
    """The task's application and arguments as Airflow renders them, submitted to local Spark
    (the executors' archive and wheel are the cluster's business, so they are left out)."""
    from recpipe.config import load_config
    from recpipe.generate import run as generate

    root = tmp_path / "root"
    generate(load_config(LOCAL_CONF, [f"paths.root={root}", *TINY]))
    task = parsed["rendered"]["clean"]
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]", task["application"],
               *task["args"], "--set", f"paths.root={root}", *[a for s in TINY for a in ("--set", s)]]
    env = {**subprocess_env(), "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    first, retry = (subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
                    for _ in range(2))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "clean 2026-11-01: running (not done yet)" in first.stdout + first.stderr
    assert (root / "_markers" / "dt=2026-11-01" / "clean.json").exists()
    assert retry.returncode == 0 and "skipped (inputs unchanged)" in retry.stdout
    from recpipe import io
    from recpipe.config import load_config

    committed = io.location(load_config(LOCAL_CONF, [f"paths.root={root}"]), "events", dt.date(2026, 11, 1))
    assert committed is not None and os.path.exists(committed)
