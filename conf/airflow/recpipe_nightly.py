"""Airflow 3 DAG: recpipe's nightly, one SparkSubmitOperator per stage, each through recpipe's runner.

Each task submits `jobs/run_stage.py --stage S --date D`, so it runs under the data root's
lock, checks the tracking server, and skips a stage whose marker still matches: an Airflow
retry of a finished stage is a skip. The stages and their order come from
`nightly.stages` in `conf/base.yaml` beside this folder (each is a declared stage; the
runner refuses any other name).

Dates. Under Airflow 3 a cron schedule uses CronTriggerTimetable: the run triggered at
02:00 on day T has logical date T, so `ds` is the trigger day itself. The pipeline works
on the last complete day, D = ds - 1 (`macros.ds_add(ds, -1)`); a backfill of logical
dates T1..T2 therefore processes D = T1-1..T2-1.

Champion. As with `recpipe backfill`, a backfill never moves `champion` for every date:
in a backfill run the `promotion_allowed` gate skips `promote` (score still runs, with
the champion in place). Promote the last backfilled date with `recpipe promote --date D`.

Airflow Variables (paths come from these, rendered when a task runs):
- `recpipe_home` (required): the checkout with `jobs/`, `conf/` and `dist/`;
- `recpipe_conf`: the profile, relative to the checkout (default `conf/cluster.yaml`);
- `recpipe_py_files`: the wheel `make dist` builds (default `dist/recpipe-0.1.0-py3-none-any.whl`);
- `recpipe_env_archive`: the executors' environment archive (default `dist/env.tar.gz`).
A Spark connection `spark_recpipe` whose host is the cluster's master URL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG

HOME = "{{ var.value.recpipe_home }}"
CONF = HOME + "/{{ var.value.get('recpipe_conf', 'conf/cluster.yaml') }}"
PY_FILES = HOME + "/{{ var.value.get('recpipe_py_files', 'dist/recpipe-0.1.0-py3-none-any.whl') }}"
ENV_ARCHIVE = HOME + "/{{ var.value.get('recpipe_env_archive', 'dist/env.tar.gz') }}"
DAY = "{{ macros.ds_add(ds, -1) }}"  # D: the day before the trigger day


def nightly_stages() -> list[str]:
    """`nightly.stages` of the base config beside this folder (read while the DAG is parsed)."""
    base = Path(__file__).resolve().parent.parent / "base.yaml"
    return list(yaml.safe_load(base.read_text())["nightly"]["stages"])


def promotion_allowed(dag_run=None) -> bool:
    """False in a backfill: a backfill registers versions but never moves champion per date."""
    return getattr(dag_run, "run_type", None) != "backfill"


def stage_task(stage: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=stage,
        conn_id="spark_recpipe",
        name=f"recpipe-{stage}",
        application=f"{HOME}/jobs/run_stage.py",
        py_files=PY_FILES,
        application_args=["--conf", CONF, "--stage", stage, "--date", DAY],
        # The executors' Python: the venv-pack archive unpacked as ./env (see the README).
        conf={"spark.pyspark.python": "./env/bin/python", "spark.archives": f"{ENV_ARCHIVE}#env"},
        # After a skipped promote, score still runs with the champion in place.
        trigger_rule="none_failed",
    )


with DAG(
    dag_id="recpipe_nightly",
    schedule="0 2 * * *",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # the runner's lock refuses a second run on the root anyway
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
    tags=["recpipe"],
) as dag:
    previous = None
    for name in nightly_stages():
        task = stage_task(name)
        if name == "promote":
            gate = ShortCircuitOperator(task_id="promotion_allowed", python_callable=promotion_allowed,
                                        ignore_downstream_trigger_rules=False)
            if previous is not None:
                previous >> gate
            previous = gate
        if previous is not None:
            previous >> task
        previous = task
