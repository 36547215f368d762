"""Fixtures shared by the suite: one local SparkSession for the whole session."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

# Read $MLFLOW_TRACKING_URI before any test sets a tracking URI (MLflow exports it): see tracking.py.
import recpipe.tracking  # noqa: F401,E402

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONF = REPO / "conf" / "local.yaml"

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


SPARK_CONF_DIR = Path(__file__).resolve().parent / "spark_conf"


def subprocess_env() -> dict[str, str]:
    """This environment for a child process, without what would point it elsewhere
    (another tracking URI, Python path or Spark install), and with the tests' Spark
    defaults for short-lived driver JVMs (tests/spark_conf/spark-defaults.conf)."""
    import os

    kept = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "SPARK_HOME")}
    return {**kept, "SPARK_CONF_DIR": str(SPARK_CONF_DIR)}


def ranker_settings(**overrides) -> dict:
    """TrainJob's `ranker:` fields as conf/local.yaml resolves them, with `overrides`."""
    from recpipe.config import load_config
    from recpipe.ranker.trainer import from_ranker_config

    return {**from_ranker_config(load_config(LOCAL_CONF).ranker), **overrides}


def network_settings(**overrides) -> dict:
    """RankerModelConfig's `ranker:` fields as conf/local.yaml resolves them, with `overrides`."""
    from recpipe.config import load_config
    from recpipe.ranker.settings import network_settings as from_config

    return {**from_config(load_config(LOCAL_CONF).ranker), **overrides}


def movielens_zip(name: str = "ml-latest-small") -> Path:
    """The release's zip where `recpipe.datasets` finds it (the cache, or the CI's shared copy);
    skips the test when it is in neither."""
    from recpipe.datasets import locate

    found = locate(name)
    if found is None:
        pytest.skip(f"{name}.zip not found; fetch it with `recpipe datasets fetch {name}`")
    return found


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


@pytest.fixture(scope="session")
def packed_env(tmp_path_factory) -> dict[str, Path]:
    """What `make pack` builds, as a user runs it, with the base install only (PACK_EXTRAS=):
    `venv`, the venv the wheel went into with its declared dependencies, and `archive`, that
    venv packed by venv-pack as the executors' environment. Without byte-compiling and at
    gzip's fastest level, which would double the pack's time here and change nothing tested."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("pack")
    venv, archive = home / "venv", home / "env.tar.gz"
    base_python = getattr(sys, "_base_executable", sys.executable)  # the interpreter the checkout's venv came from
    checkout_venv = Path(sys.executable).parent.parent
    done = subprocess.run(["make", "--no-print-directory", "pack", f"VENV={checkout_venv}", "PACK_EXTRAS=",
                           f"PACK_VENV={venv}", f"PACK_OUT={archive}", "PACK_PIP_ARGS=--no-compile", "PACK_LEVEL=1",
                           f"PYTHON={base_python}"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"venv": venv, "archive": archive}


@pytest.fixture
def make_config(tmp_path):
    """Build a config from conf/local.yaml rooted in this test's temp dir, plus overrides."""
    from recpipe.config import load_config

    def _make(*overrides: str, root: Path | None = None):
        return load_config(LOCAL_CONF, [f"paths.root={root or tmp_path / 'root'}", *overrides])

    return _make


def day_folder(cfg, name: str, day) -> str:
    """The committed folder of one day of a table: what its readers read."""
    from recpipe import io

    found = io.location(cfg, name, day)
    assert found is not None, f"table {name} has no committed day {day}"
    return found


def whole_table(spark, cfg, name: str):
    """Every committed day of a table, with its `dt` column."""
    from recpipe import io

    days = io.partition_days(cfg, name)
    assert days, f"table {name} has no committed day"
    return io.read_days(spark, cfg, name, days[0], days[-1])


def content_digest(folder) -> str:
    """A checksum of a Parquet folder's rows, independent of file names, order and count."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    rows = sorted(json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(folder).to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def wait_for_http(url: str, process, log_path: Path, timeout_s: float, what: str) -> None:
    """Return once `url` answers; fail with the end of the log when `process` exits or
    `timeout_s` passes first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up: {log_path.read_text()[-4000:]}")
            time.sleep(0.5)


@contextmanager
def mlflow_server(cfg, port: int, log_path: Path):
    """`mlflow server` for cfg's root on 127.0.0.1:port, up within 120 s, stopped by its process id.
    Yields the server's home (store and served artifacts)."""
    import os
    import signal
    import subprocess

    from recpipe.tracking import server_command

    command = server_command(cfg, port=port)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", process, log_path, 120, "mlflow server")
            yield Path(command[command.index("--artifacts-destination") + 1]).parent
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the server's workers are in its group
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
