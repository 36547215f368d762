"""Fixtures shared by the suite: one local SparkSession for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONF = REPO / "conf" / "local.yaml"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """local[2] Spark with few shuffle partitions, UI off, scratch space in a temp dir."""
    from recpipe.config import load_config
    from recpipe.spark import get_spark

    scratch = tmp_path_factory.mktemp("spark")
    cfg = load_config(
        LOCAL_CONF,
        [
            f"paths.root={scratch / 'root'}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=4",
            f"spark.local_dir={scratch / 'local'}",
            "spark.extra={spark.ui.enabled: 'false', spark.sql.warehouse.dir: "
            f"'{scratch / 'warehouse'}', spark.driver.extraJavaOptions: '-Dderby.system.home={scratch}'}}",
        ],
    )
    session = get_spark(cfg, "tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path):
    """Build a config from conf/local.yaml rooted in this test's temp dir, plus overrides."""
    from recpipe.config import load_config

    def _make(*overrides: str, root: Path | None = None):
        return load_config(LOCAL_CONF, [f"paths.root={root or tmp_path / 'root'}", *overrides])

    return _make
