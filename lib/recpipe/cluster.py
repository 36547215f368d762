"""A Spark standalone cluster on this machine: one master and `cluster.workers` workers
from the installed pyspark, bound to `cluster.host`, their process ids recorded in
`<run_dir>/cluster.json` so that `cluster-down` stops exactly those processes.

`make cluster-up` / `make cluster-down` and the tests' fixtures call the same functions.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from recpipe.config import Config
from recpipe.errors import RecpipeError

log = logging.getLogger("recpipe.cluster")

STATE_FILE = "cluster.json"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_READY = "I have been elected leader"
WORKER_READY = "Successfully registered with master"


class ClusterError(RecpipeError):
    """The local cluster could not be started or stopped."""


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_url(cfg: Config) -> str:
    return f"spark://{cfg.cluster.host}:{cfg.cluster.master_port}"


def run_dir(cfg: Config) -> Path:
    return Path(cfg.cluster.run_dir).resolve()


def _launch(cfg: Config, name: str, arguments: list[str]) -> dict:
    folder = run_dir(cfg)
    log_path = folder / f"{name}.log"
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": cfg.cluster.host,
           "SPARK_NO_DAEMONIZE": "1"}
    with open(log_path, "wb") as out:
        # spark-class ends in `exec java ...`, so this pid is the JVM's; its own session
        # lets cluster-down signal exactly it.
        process = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *arguments], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=folder)
    return {"name": name, "pid": process.pid, "log": str(log_path)}


def start(cfg: Config) -> dict:
    """Start the master and the workers; wait until every worker has registered."""
    c = cfg.cluster
    folder = run_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE_FILE).exists() and any(_alive(p["pid"]) for p in read_state(cfg)["processes"]):
        raise ClusterError(f"a cluster from {folder / STATE_FILE} is still running; `make cluster-down` first")
    processes = [_launch(cfg, "master", [MASTER_CLASS, "--host", c.host, "--port", str(c.master_port),
                                         "--webui-port", str(c.master_webui_port)])]
    state = {"master": master_url(cfg), "processes": processes}
    write_state(cfg, state)  # recorded before waiting, so a failed start can still be stopped
    try:
        _wait_for(processes[0], MASTER_READY, c.start_timeout_s)
        for i in range(c.workers):
            work_dir = folder / f"worker-{i}"
            work_dir.mkdir(exist_ok=True)
            processes.append(_launch(cfg, f"worker-{i}", [
                WORKER_CLASS, "--host", c.host, "--cores", str(c.worker_cores), "--memory", c.worker_memory,
                "--webui-port", "0", "--work-dir", str(work_dir), master_url(cfg)]))
            write_state(cfg, state)
        for worker in processes[1:]:
            _wait_for(worker, WORKER_READY, c.start_timeout_s)
    except ClusterError:
        stop(cfg)
        raise
    log.info("cluster up at %s: %s", state["master"], ", ".join(f"{p['name']} pid {p['pid']}" for p in processes))
    return state


def _wait_for(process: dict, marker: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = Path(process["log"]).read_text(errors="replace")
        if marker in text:
            return
        if not _alive(process["pid"]):
            raise ClusterError(f"{process['name']} (pid {process['pid']}) exited: {text[-2000:]}")
        time.sleep(0.5)
    raise ClusterError(f"{process['name']} (pid {process['pid']}) not ready after {timeout_s} s; see {process['log']}")


def stop(cfg: Config, timeout_s: float = 30.0) -> list[int]:
    """Stop the recorded processes by id (TERM, then KILL after `timeout_s`); returns the ids."""
    if not (run_dir(cfg) / STATE_FILE).exists():
        return []
    pids = [p["pid"] for p in reversed(read_state(cfg)["processes"])]  # workers before the master
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    (run_dir(cfg) / STATE_FILE).unlink()
    log.info("cluster down: stopped %s", ", ".join(map(str, pids)))
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_state(cfg: Config) -> dict:
    return json.loads((run_dir(cfg) / STATE_FILE).read_text())


def write_state(cfg: Config, state: dict) -> None:
    (run_dir(cfg) / STATE_FILE).write_text(json.dumps(state, indent=1))
