"""The clean job as a cluster runs it: `spark-submit` with the package shipped as a wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recpipe.config import load_config

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.generate]

REPO = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
# One small day: a few hundred users and one bot, every fault kind at a visible rate.
GENERATED = [
    "generate.users=300", "generate.items=200", "generate.categories=8", "generate.days=1",
    "generate.bot_users_per_day=1", "generate.rate_malformed_json=0.01", "generate.rate_missing_field=0.01",
    "generate.rate_unknown_event_type=0.01", "generate.rate_bad_timestamp=0.01",
    "generate.rate_future_timestamp=0.01", "generate.rate_invalid_value=0.01", "generate.rate_duplicate_same_day=0.01",
]
SUBMIT_TIMEOUT_S = 480  # below pytest's 600 s per test; a loaded 2-core machine needs a few minutes


def build_wheel(target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(target), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = target.glob("recpipe-*.whl")
    return wheel


def test_clean_events_job_runs_under_spark_submit(tmp_path):
    from recpipe.generate import run as generate

    assert SPARK_SUBMIT.exists(), f"spark-submit missing beside {sys.executable}"
    root = tmp_path / "root"
    manifest = generate(load_config(REPO / "conf" / "local.yaml", [f"paths.root={root}", *GENERATED]))
    day = next(iter(manifest["days"]))
    planted = manifest["days"][day]
    wheel = build_wheel(tmp_path / "dist")

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "SPARK_HOME")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    command = [
        str(SPARK_SUBMIT), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.local.dir={tmp_path / 'spark-local'}", "--py-files", str(wheel),
        "jobs/clean_events.py", "--conf", "conf/local.yaml", "--set", f"paths.root={root}", "--date", day,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]

    events = pq.read_table(root / "lake" / "events" / f"dt={day}")
    rejects = pq.read_table(root / "lake" / "rejects" / f"dt={day}")
    assert events.num_rows == planted["clean_events"]
    assert rejects.num_rows == sum(planted["faults"].values())
    assert sorted(events.column_names) == sorted(
        ["event_id", "user_id", "item_id", "user_idx", "item_idx", "event_type", "ts", "session_id", "request_id",
         "position", "device", "price", "rating"])
    assert min(events.column("user_idx").to_pylist()) >= 1
    report = json.loads((root / "lake" / "quality" / f"dt={day}" / "quality.json").read_text())
    assert report["rejected_by_reason"] == planted["faults"]
    assert report["lines_read"] == planted["lines"]
