"""A driver killed in the middle of writing features: the previous output of that date stays
readable and intact, the next run removes what it had half written, and a rerun completes. The stage runs in its own process (its own
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

from tests.conftest import LOCAL_CONF, REPO, content_digest, day_folder, subprocess_env, whole_table

pytestmark = [pytest.mark.spark, pytest.mark.generate, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = ["generate.users=400", "generate.items=150", "generate.categories=6", "generate.days=4",
        "features.train_days=2", "features.min_files_per_split=1"]
FEATURE_TABLES = ("user_features", "item_features", "sequences", "samples")


def versions(lake: Path) -> set[Path]:
    """The version folders of the feature tables (committed ones and any being written)."""
    return {p for table in FEATURE_TABLES if (lake / table).is_dir() for p in (lake / table).glob("_v-*")}


def test_a_driver_killed_mid_write_of_features_leaves_the_previous_output_intact(spark, tmp_path):
    from recpipe import tables
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
    before = {t: content_digest(day_folder(cfg, t, D)) for t in FEATURE_TABLES}
    committed = versions(root / "lake")

    command = [sys.executable, "-m", "recpipe.cli", "features", "--conf", str(LOCAL_CONF), "--date", D.isoformat()]
    for setting in [*settings, f"spark.local_dir={tmp_path / 'spark'}"]:
        command += ["--set", setting]
    env = subprocess_env()
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + 300
    while not versions(root / "lake") - committed and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    writing = versions(root / "lake") - committed
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its JVM
    driver.wait(timeout=60)
    assert writing, "the driver finished (or timed out) before it wrote: " + (tmp_path / "driver.log").read_text()[-3000:]
    assert driver.returncode == -signal.SIGKILL

    after_kill = {t: content_digest(day_folder(cfg, t, D)) for t in FEATURE_TABLES}
    assert after_kill == before
    assert whole_table(spark, cfg, "samples").where(f"dt = '{D}'").count() > 0  # the table reads whole

    tables.recover(cfg)  # what the next run's runner does first
    assert versions(root / "lake") == committed  # the half-written version is gone
    features.run(spark, cfg, D)
    assert {t: content_digest(day_folder(cfg, t, D)) for t in FEATURE_TABLES} == before
