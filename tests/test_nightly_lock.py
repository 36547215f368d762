"""The runner's guards that need no Spark: the root's lock and the tracking-server check."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from recpipe.errors import RecpipeError
from recpipe.lock import LockedError, lock_path, root_lock
from recpipe.runner import check_tracking_server

from tests.conftest import free_port


def test_a_second_nightly_is_refused_while_another_process_holds_the_lock(make_config, tmp_path):
    from tests.conftest import LOCAL_CONF

    cfg = make_config()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from recpipe.config import load_config
        from recpipe.lock import root_lock
        cfg = load_config({str(LOCAL_CONF)!r}, ["paths.root={cfg.paths.root}"])
        with root_lock(cfg, "test"):
            print("locked", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"'pid': {holder.pid}"):
            with root_lock(cfg, "test"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with root_lock(cfg, "test"):  # the dead holder's OS lock went with it
        assert json.load(open(lock_path(cfg) + ".owner"))["pid"] == os.getpid()


def test_a_stale_lock_left_by_a_dead_process_is_taken_over_and_reported(make_config, caplog):
    cfg = make_config()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    os.makedirs(os.path.dirname(lock_path(cfg)), exist_ok=True)
    open(lock_path(cfg), "w").close()
    with open(lock_path(cfg) + ".owner", "w") as out:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "since": "2026-11-20T02:00:00+00:00"}, out)
    with caplog.at_level(logging.WARNING, logger="recpipe.lock"):
        with root_lock(cfg, "test"):
            pass
    assert "stale lock" in caplog.text and str(dead.pid) in caplog.text
    assert not os.path.exists(lock_path(cfg) + ".owner")  # released cleanly


def test_the_lock_is_released_when_the_run_fails(make_config):
    cfg = make_config()
    with pytest.raises(RuntimeError):
        with root_lock(cfg, "test"):
            raise RuntimeError("a stage failed")
    with root_lock(cfg, "test"):
        pass


def test_an_unreachable_tracking_server_is_reported(make_config):
    cfg = make_config(f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}")
    with pytest.raises(RecpipeError, match="tracking server .* is not reachable"):
        check_tracking_server(cfg, timeout_s=5)


def test_nightly_stops_before_any_spark_work_when_the_server_is_down(tmp_path):
    from tests.conftest import LOCAL_CONF, REPO

    root = tmp_path / "root"
    done = subprocess.run(
        [sys.executable, "-m", "recpipe.cli", "nightly", "--conf", str(LOCAL_CONF), "--date", "2026-11-05",
         "--set", f"paths.root={root}", "--set", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "is not reachable" in done.stderr and "nothing was run" in done.stderr
    assert "SparkContext" not in done.stderr and not (root / "lake").exists()
