"""Each stage as its own Spark application: `spark-submit --master <spark.master> --py-files
<wheel> jobs/<stage>.py`, the way a cluster runs it.

With `submit.enabled` (as in `conf/cluster.yaml`), `recpipe nightly`, `backfill`, `pipeline`
and the stage commands stay on the submitting machine and launch one application per stage
(the pipeline command: one for its whole range). The submitted job gets this process's
resolved configuration as a file, so it runs with exactly the settings the caller had, and
hands its summary back as JSON. Inside a submitted job nothing is submitted again: the
driver's Python then has `PYSPARK_GATEWAY_PORT` set by spark-submit.
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import yaml

from recpipe.config import BASE_FILE_NAME, Config
from recpipe.errors import ConfigError, RecpipeError
from recpipe.logs import spark_java_options

log = logging.getLogger("recpipe.submit")

# command -> the jobs/ entry that runs it: any declared stage goes through `run-stage`
JOBS = {
    "run-stage": "run_stage.py",
    "pipeline": "run_pipeline.py",
}
TAIL_LINES = 40  # of the application's output, quoted in the error when it fails
STOP_GRACE_S = 15.0  # from SIGTERM to SIGKILL when a submitted application is stopped
PR_SET_PDEATHSIG = 1  # prctl(2)


class SubmitError(RecpipeError):
    """A submitted application failed or ran past submit.timeout_s."""


def launched_by_spark_submit() -> bool:
    """True in the driver of an application spark-submit started (it passes the JVM's gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def submitting(cfg: Config) -> bool:
    return cfg.submit.enabled and not launched_by_spark_submit()


def session_for(cfg: Config, stage: str):
    """This process's Spark session, or None when the stages go out through spark-submit."""
    if submitting(cfg):
        return None
    from recpipe.spark import get_spark

    return get_spark(cfg, stage)


def spark_submit_path() -> Path:
    """$SPARK_HOME/bin/spark-submit on a machine with a Spark install, else pyspark's own."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"]) / "bin" / "spark-submit"
    from recpipe.cluster import spark_home

    return spark_home() / "bin" / "spark-submit"


def wheel(cfg: Config) -> str:
    matches = sorted(glob.glob(cfg.submit.py_files))
    if len(matches) != 1:
        found = ", ".join(matches) or "nothing"
        raise ConfigError(f"submit.py_files {cfg.submit.py_files!r} must match one wheel, found {found}; "
                          "`make dist` builds it")
    return matches[0]


def submit_command(cfg: Config, job: str, conf_file: str, arguments: Sequence[str], name: str | None = None) -> list[str]:
    """The spark-submit line for one job of jobs_dir with its own arguments; the
    application is called `<spark.app_name>-<name>` (default: the job)."""
    script = Path(cfg.submit.jobs_dir) / JOBS[job]
    if not script.is_file():
        raise ConfigError(f"submit.jobs_dir: {script} not found (run from the repository root)")
    conf = {k: str(v) for k, v in cfg.submit.conf.items()}
    settings = {
        "spark.pyspark.python": cfg.submit.python or sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        **conf,
        **spark_java_options(conf),  # the driver's JVM starts here, so its options go on this line
    }
    command = [str(spark_submit_path()), "--master", cfg.spark.master, "--name", f"{cfg.spark.app_name}-{name or job}",
               "--py-files", wheel(cfg)]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(script), "--conf", conf_file, *arguments]


def write_resolved_config(cfg: Config, folder: str) -> str:
    """The whole resolved config as a base.yaml (every key present, so nothing is layered in)."""
    path = os.path.join(folder, BASE_FILE_NAME)
    with open(path, "w") as out:
        yaml.safe_dump(cfg.to_dict(), out, sort_keys=False)
    return path


def submit(cfg: Config, job: str, arguments: Sequence[str], name: str | None = None) -> object:
    """Run one job through spark-submit, echoing its output; return the JSON it leaves in
    --summary-json. Raises SubmitError with the end of its output when it fails."""
    with tempfile.TemporaryDirectory(prefix=f"recpipe-submit-{job}-") as folder:
        summary_file = os.path.join(folder, "summary.json")
        command = submit_command(cfg, job, write_resolved_config(cfg, folder),
                                 [*arguments, "--summary-json", summary_file], name)
        log.info("submitting %s to %s", JOBS[job], cfg.spark.master)
        returncode, tail = _run_echoing(command, cfg.submit.timeout_s)
        if returncode != 0:
            raise SubmitError(f"spark-submit {JOBS[job]} {' '.join(arguments)} exited with {returncode}"
                              + (f" (killed after submit.timeout_s={cfg.submit.timeout_s})" if returncode is None else "")
                              + ":\n" + "".join(tail))
        with open(summary_file) as f:
            return json.load(f)


def submit_stage(cfg: Config, stage: str, date: dt.date) -> dict:
    """One stage for D as its own application. The submitting runner decided to run it and
    holds the lock; the application's runner runs it under that lock (`recpipe.lock`) and
    writes its marker."""
    return submit(cfg, "run-stage", ["--stage", stage, "--date", date.isoformat(), "--force"], name=stage)


def _run_echoing(command: list[str], timeout_s: int) -> tuple[int | None, collections.deque]:
    """Run `command` in its own process group, copying its output to stderr and keeping the
    last lines; kill the group after `timeout_s` (returncode None).

    The application belongs to this process: if it stops waiting for any reason (Ctrl-C,
    the SIGTERM the runner turns into an exception, any error), the group is stopped and
    reaped before this returns, so the lock the caller holds outlives the application. If
    this process is killed outright, the kernel sends spark-submit SIGKILL (Linux's
    parent-death signal)."""
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True, preexec_fn=_die_with_parent)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _signal_group(process, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    finished = False
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line)
        process.wait()
        finished = True
    finally:
        timer.cancel()
        if not finished:
            stop_group(process)
    return (None if timed_out.is_set() else process.returncode), tail


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the application's process group (Spark's shutdown hooks end the application
    on the master), SIGKILL what is left after `grace_s`, and reap spark-submit."""
    log.warning("stopping the submitted application (process group %d)", process.pid)
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)  # the driver's Python children too, whatever spark-submit did
    process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGKILL when the submitting process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
