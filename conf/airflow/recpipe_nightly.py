"""Airflow 3 DAG: recpipe's nightly, one SparkSubmitOperator per stage.

Dates. Under Airflow 3 a cron schedule uses CronTriggerTimetable: the run triggered at
02:00 on day T has logical date T, so `ds` is the trigger day itself. The pipeline works
on the last complete day, D = ds - 1 (`macros.ds_add(ds, -1)`); a backfill of logical
dates T1..T2 therefore processes D = T1-1..T2-1.

Set the Airflow Variables `recpipe_home` (the checkout with dist/ and conf/) and
`recpipe_conf` (e.g. conf/cluster.yaml), and a Spark connection `spark_recpipe` whose
host is the cluster's master URL.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

# Templates, rendered when a task runs (no Variable lookups while the DAG file is parsed).
HOME = "{{ var.value.get('recpipe_home', '/opt/recpipe') }}"
CONF = "{{ var.value.get('recpipe_conf', 'conf/cluster.yaml') }}"
DAY = "{{ macros.ds_add(ds, -1) }}"  # D: the day before the trigger day

STAGES = [  # (task id, spark-submit application)
    ("clean", "jobs/clean_events.py"),
    ("features", "jobs/build_features.py"),
    ("als", "jobs/train_als.py"),
    ("train", "jobs/train_ranker.py"),
    ("promote", "jobs/promote_ranker.py"),
    ("score", "jobs/score_candidates.py"),
]

with DAG(
    dag_id="recpipe_nightly",
    schedule="0 2 * * *",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # like the nightly's file lock: one run at a time
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
    tags=["recpipe"],
) as dag:
    previous = None
    for task_id, application in STAGES:
        task = SparkSubmitOperator(
            task_id=task_id,
            conn_id="spark_recpipe",
            application=f"{HOME}/{application}",
            py_files=f"{HOME}/dist/recpipe-0.1.0-py3-none-any.whl",
            application_args=["--conf", f"{HOME}/{CONF}", "--date", DAY],
            # The executors' Python: the venv-pack archive unpacked as ./env (see the README).
            conf={"spark.pyspark.python": "./env/bin/python", "spark.archives": "/opt/recpipe/dist/env.tar.gz#env"},
        )
        if previous is not None:
            previous >> task
        previous = task
