"""Fixtures shared by the suite: one local SparkSession for the whole session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONF = REPO / "conf" / "local.yaml"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Start of a `python -c` script for a consumer's process: any import of recpipe fails, so
# what the script loads must carry its own code (a registered model's code_paths).
WITHOUT_RECPIPE = """
import importlib.abc, json, sys

class NoRecpipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "recpipe" or name.startswith("recpipe."):
            raise ImportError("recpipe is blocked in this process")
        return None

sys.meta_path.insert(0, NoRecpipe())
"""
RECPIPE_NOT_LOADED = 'assert not any(m == "recpipe" or m.startswith("recpipe.") for m in sys.modules)\n'


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
