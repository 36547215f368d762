"""The pipeline against a real `mlflow server` process (started and stopped by the test):
runs and artifacts go through the server, and come back through its REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.spark, pytest.mark.generate, pytest.mark.slow, pytest.mark.timeout(900)]

DATA = ["generate.users=400", "generate.items=150", "generate.categories=6", "generate.days=3",
        "als.train_days=2", "als.rank=4", "als.max_iter=2", "als.top_k=20", "als.eval_ks=[10]",
        "als.register_model=false", "nightly.stages=[clean, als]"]



def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on a free 127.0.0.1 port, stopped by its own process id."""
    from recpipe.config import load_config
    from recpipe.tracking import server_command
    from tests.conftest import LOCAL_CONF

    cfg = load_config(LOCAL_CONF, [f"paths.root={tmp_path / 'root'}"])
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(server_command(cfg, port=port), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield uri, tmp_path / "root" / "mlflow-server"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server's gunicorn/uvicorn workers are in its group
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def test_a_nightly_logs_through_the_server_and_the_runs_read_back_over_rest(spark, server, tmp_path, monkeypatch):
    from recpipe.config import load_config
    from recpipe.generate import run as generate
    from recpipe.nightly import nightly
    from recpipe.pipeline import run_stages
    from tests.conftest import LOCAL_CONF

    uri, server_home = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the config leaves mlflow.tracking_uri empty
    cfg = load_config(LOCAL_CONF, [f"paths.root={tmp_path / 'data'}", *DATA])
    generate(cfg)
    *before, D = cfg.generate.dates
    run_stages(spark, cfg, before, ["clean"])
    outcomes = nightly(cfg, [D])
    assert [(o.stage, o.status) for o in outcomes] == [("clean", "ok"), ("als", "ok")]

    for experiment_name in ("recpipe-etl", "recpipe-als"):
        experiment = get_json(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment_name}")
        runs = get_json(f"{uri}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment"]["experiment_id"]],
            "filter": f"tags.date = '{D}'",
        })["runs"]
        assert len(runs) == 1, experiment_name
        assert runs[0]["info"]["status"] == "FINISHED"
        assert runs[0]["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    # Artifacts were uploaded to the server's destination, not written by the client.
    assert any(p.name == "quality.json" for p in (server_home / "artifacts").rglob("*"))
    assert not (tmp_path / "data" / "mlflow").exists()
