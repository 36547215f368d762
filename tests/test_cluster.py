"""A real Spark standalone cluster on 127.0.0.1 (master + 2 workers from the installed
pyspark): `clean` submitted to it with the wheel gives the same events as local mode, and
cluster-down stops exactly the recorded processes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import LOCAL_CONF, REPO, free_port
from tests.test_spark_submit import GENERATED, SPARK_SUBMIT, SUBMIT_TIMEOUT_S, build_wheel

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.generate, pytest.mark.timeout(900)]



@pytest.fixture
def cluster(tmp_path):
    from recpipe import cluster as local_cluster
    from recpipe.config import load_config

    cfg = load_config(REPO / "conf" / "cluster.yaml", [
        f"cluster.master_port={free_port()}", f"cluster.master_webui_port={free_port()}",
        f"cluster.run_dir={tmp_path / 'cluster'}", "cluster.worker_memory=1g"])
    state = local_cluster.start(cfg)
    try:
        yield cfg, state
    finally:
        local_cluster.stop(cfg)


def events_table(root, day):
    return pq.read_table(root / "lake" / "events" / f"dt={day}").to_pandas().sort_values("event_id").reset_index(drop=True)


def test_clean_on_the_standalone_cluster_equals_local_mode(spark, cluster, tmp_path):
    from recpipe import cluster as local_cluster
    from recpipe.config import load_config
    from recpipe.etl import clean
    from recpipe.generate import run as generate

    cfg, state = cluster
    local_root, cluster_root = tmp_path / "local", tmp_path / "on-cluster"
    for root in (local_root, cluster_root):
        manifest = generate(load_config(LOCAL_CONF, [f"paths.root={root}", *GENERATED]))
    day = next(iter(manifest["days"]))
    clean.run(spark, load_config(LOCAL_CONF, [f"paths.root={local_root}"]), dt.date.fromisoformat(day))

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "SPARK_HOME")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    submitted = subprocess.run([
        str(SPARK_SUBMIT),
        "--master", state["master"], "--conf", f"spark.pyspark.python={sys.executable}",
        "--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false",
        "--py-files", str(build_wheel(tmp_path / "dist")),
        "jobs/clean_events.py", "--conf", "conf/local.yaml", "--set", f"paths.root={cluster_root}", "--date", day,
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    assert submitted.returncode == 0, submitted.stderr[-4000:]

    master_log = (tmp_path / "cluster" / "master.log").read_text()
    assert "Registering app recpipe-clean" in master_log and master_log.count("Launching executor") >= 2
    cluster_events, local_events = events_table(cluster_root, day), events_table(local_root, day)
    assert len(cluster_events) == manifest["days"][day]["clean_events"]
    assert cluster_events.equals(local_events)

    pids = [p["pid"] for p in state["processes"]]
    assert sorted(local_cluster.stop(cfg)) == sorted(pids)
    assert not any(local_cluster._alive(pid) for pid in pids)
