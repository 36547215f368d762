"""A driver killed in the middle of writing features: the previous output of that date stays
readable and intact, and a rerun completes. The stage runs in its own process (its own
Spark JVM), killed with SIGKILL, process group and all, as a lost driver machine would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LOCAL_CONF, REPO, content_digest, subprocess_env

pytestmark = [pytest.mark.spark, pytest.mark.generate, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = ["generate.users=400", "generate.items=150", "generate.categories=6", "generate.days=4",
        "features.train_days=2", "features.min_files_per_split=1"]
FEATURE_TABLES = ("user_features", "item_features", "sequences", "samples")


def staging_folders(lake: Path) -> list[Path]:
    """Spark's and recpipe's in-progress write folders under the feature tables."""
    return [p for table in FEATURE_TABLES if (lake / table).is_dir() for p in (lake / table).iterdir()
            if p.name.startswith((".spark-staging", "_staging"))]


def test_a_driver_killed_mid_write_of_features_leaves_the_previous_output_intact(spark, tmp_path):
    from recpipe.config import load_config
    from recpipe.etl import clean, features
    from recpipe.generate import run as generate

    root = tmp_path / "root"
    settings = [f"paths.root={root}", *TINY]
    cfg = load_config(LOCAL_CONF, settings)
    generate(cfg)
    D = cfg.generate.dates[-1]
    clean.run_range(spark, cfg, cfg.generate.dates[0], D)
    features.run(spark, cfg, D)
    before = {t: content_digest(cfg.table_path(t, D)) for t in FEATURE_TABLES}

    command = [sys.executable, "-m", "recpipe.cli", "features", "--conf", str(LOCAL_CONF), "--date", D.isoformat()]
    for setting in [*settings, f"spark.local_dir={tmp_path / 'spark'}"]:
        command += ["--set", setting]
    env = subprocess_env()
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + 300
    while not staging_folders(root / "lake") and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    writing = staging_folders(root / "lake")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its JVM
    driver.wait(timeout=60)
    assert writing, "the driver finished (or timed out) before it wrote: " + (tmp_path / "driver.log").read_text()[-3000:]
    assert driver.returncode == -signal.SIGKILL

    after_kill = {t: content_digest(cfg.table_path(t, D)) for t in FEATURE_TABLES}
    assert after_kill == before
    assert spark.read.parquet(cfg.table_path("samples")).where(f"dt = '{D}'").count() > 0  # the table reads whole

    features.run(spark, cfg, D)
    assert {t: content_digest(cfg.table_path(t, D)) for t in FEATURE_TABLES} == before
