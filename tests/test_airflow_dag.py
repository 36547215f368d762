"""The Airflow DAG parses under Airflow 3 (DagBag) with the stages in order.

Airflow is not part of the pinned stack, so it is installed in a throw-away virtualenv
(`var/airflow-venv`, about 4 minutes the first time). That does not fit the CI budget, so
the test runs only when asked:

    RECPIPE_TEST_AIRFLOW=1 .venv/bin/python -m pytest tests/test_airflow_dag.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

AIRFLOW = "apache-airflow==3.3.2"
VENV = REPO / "var" / "airflow-venv"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RECPIPE_TEST_AIRFLOW") != "1",
                       reason="installs Airflow in a throw-away venv; set RECPIPE_TEST_AIRFLOW=1"),
]


def airflow_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", AIRFLOW, "apache-airflow-providers-apache-spark"],
                       check=True, timeout=1800)
    return str(python)


def test_the_nightly_dag_parses_and_runs_the_stages_in_order_for_the_day_before(tmp_path):
    script = textwrap.dedent("""
        import json
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag("conf/airflow")
        dag = bag.dags["recpipe_nightly"]
        print(json.dumps({
            "errors": {k: str(v) for k, v in bag.import_errors.items()},
            "order": [t.task_id for t in dag.topological_sort()],
            "timetable": type(dag.timetable).__name__,
            "max_active_runs": dag.max_active_runs,
            "args": dag.get_task("train").application_args,
            "application": dag.get_task("score").application,
        }))
    """)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "false"}
    done = subprocess.run([airflow_python(), "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert parsed["order"] == ["clean", "features", "als", "train", "promote", "score"]
    assert parsed["timetable"] == "CronTriggerTimetable" and parsed["max_active_runs"] == 1
    assert parsed["args"][-2:] == ["--date", "{{ macros.ds_add(ds, -1) }}"]
    assert parsed["application"].endswith("jobs/score_candidates.py")
