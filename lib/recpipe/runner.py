"""The one way a stage runs, whatever started it: a stage command, `jobs/*.py` under
spark-submit, `pipeline`, `history`, `nightly`, `backfill` or an Airflow task.

    with running(cfg, "nightly 2026-11-14") as runner:   # tracking server checked, lock taken
        runner.run(stages.get("clean"), date)           # skip if done, else check inputs, run, mark

`run` skips a stage whose marker still matches (config values, input and output
listings, registry versions; see `recpipe.markers`) and says why it skips or reruns;
otherwise it checks that the required inputs exist, runs the stage (in this process's
Spark session, or as a spark-submit application under this process's lock when
`submit.enabled`), and writes the marker after the outputs. A failure leaves no marker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import ContextManager, Iterator, Sequence

from recpipe.config import Config
from recpipe.errors import DataError, RecpipeError
from recpipe.heartbeat import heartbeat
from recpipe.lock import root_lock
from recpipe.markers import marker_body, read_marker, remove_marker, stage_state, why_rerun, write_marker
from recpipe.stage import Stage

log = logging.getLogger("recpipe.runner")

SKIPPED, DONE, FAILED, NOT_RUN = "skipped", "ok", "failed", "not run"


class StageFailed(RecpipeError):
    """A stage failed; `.outcomes` holds what ran before it and the failure itself."""

    def __init__(self, message: str, outcomes: list["StageOutcome"]):
        super().__init__(message)
        self.outcomes = outcomes


@dataclasses.dataclass
class StageOutcome:
    date: dt.date
    stage: str
    status: str
    seconds: float = 0.0
    rows_in: int | None = None
    rows_out: int | None = None
    note: str = ""
    summary: dict = dataclasses.field(default_factory=dict)


def check_tracking_server(cfg: Config, timeout_s: float = 10.0) -> None:
    """Fail fast when the tracking URI is a server that does not answer its health check."""
    from recpipe.tracking import tracking_uri

    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise RecpipeError(f"MLflow tracking server {uri} is not reachable ({problem}); nothing was run. "
                       "Start it (`make mlflow-server`) or set mlflow.tracking_uri / MLFLOW_TRACKING_URI")


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C, so submitted applications are stopped and the
    lock released on the way out; the process exits 143 (128 + SIGTERM)."""


@contextmanager
def running(cfg: Config, command: str) -> Iterator["Runner"]:
    """Check the tracking server, take the root's lock, finish or undo the table commits of
    a run that died (`tables.recover`), and yield a runner for `cfg`."""
    from recpipe.tables import recover

    check_tracking_server(cfg)
    with terminated_as_exit(), root_lock(cfg, command):
        recover(cfg)
        yield Runner(cfg, command)


@contextmanager
def terminated_as_exit() -> Iterator[None]:
    """Turn SIGTERM (a scheduler stopping the task) into `Terminated` while inside, so that
    `finally` blocks run: Python's default for SIGTERM is to die on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers live in the main thread (an Airflow task runs there)
        return

    def handler(signum, frame):
        log.warning("received SIGTERM: stopping what this run started, then releasing the lock")
        raise Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Runner:
    """Runs declared stages under the lock that `running` holds; the Spark session is
    started on first need, so a run that skips everything starts no JVM."""

    def __init__(self, cfg: Config, command: str, spark=None):
        self.cfg = cfg
        self.command = command
        self._spark = spark

    @property
    def spark(self):
        return self.spark_for(self.command.split()[0])

    def spark_for(self, name: str):
        """The session, started (as application `<spark.app_name>-<name>`) if there is none yet."""
        if self._spark is None:
            from recpipe.submit import session_for

            self._spark = session_for(self.cfg, name)
        return self._spark

    def with_config(self, cfg: Config) -> "Runner":
        """A runner for another config of the same root (history's stretched windows)."""
        return Runner(cfg, self.command, self._spark)

    def run(self, stage: Stage, date: dt.date, *, force: bool = False) -> StageOutcome:
        """Run `stage` for `date` unless its marker says it is done; raises StageFailed."""
        cfg = self.cfg
        reason = why_rerun(read_marker(cfg, date, stage.name), stage_state(cfg, stage, date))
        if reason is None and not force:
            marker = read_marker(cfg, date, stage.name)
            log.info("%s %s: skipping, done at %s with the same config, inputs and outputs (--force reruns)",
                     stage.name, date, marker.get("finished"))
            return StageOutcome(date, stage.name, SKIPPED, rows_in=marker.get("rows_in"),
                                rows_out=marker.get("rows_out"), note="inputs unchanged")
        log.info("%s %s: running (%s)", stage.name, date, "--force" if force and reason is None else reason)
        started = time.perf_counter()
        try:
            require_inputs(cfg, stage, date)
            remove_marker(cfg, date, stage.name)
            with self.heartbeat(f"{stage.name} {date}"):
                summary = self._execute(stage, date)
        except Exception as err:
            failed = StageOutcome(date, stage.name, FAILED, time.perf_counter() - started, note=str(err)[:200])
            raise StageFailed(f"stage {stage.name} failed for {date}: {type(err).__name__}: {err}", [failed]) from err
        seconds = time.perf_counter() - started
        outcome = StageOutcome(date, stage.name, DONE, seconds, *stage.rows(summary), note=stage.note(summary),
                               summary=summary)
        if not self._submitted():  # a submitted stage's own runner wrote the marker
            write_marker(cfg, date, stage.name, marker_body(stage.name, date, stage_state(cfg, stage, date),
                                                            seconds, stage.rows(summary), outcome.note))
        log.info("%s %s: done in %.1f s", stage.name, date, seconds)
        return outcome

    def heartbeat(self, what: str) -> ContextManager[None]:
        """While inside, a log line every `logging.heartbeat_seconds` (`recpipe.heartbeat`),
        with the session's active Spark stages once it has started. None here when the stages
        are submitted: the application's own runner beats, and its lines are echoed."""
        every_s = 0 if self._submitted() else self.cfg.logging.heartbeat_seconds
        return heartbeat(what, every_s, lambda: self._spark)

    def _submitted(self) -> bool:
        from recpipe.submit import submitting

        return submitting(self.cfg)

    def _execute(self, stage: Stage, date: dt.date) -> dict:
        if self._submitted():
            from recpipe.submit import submit_stage

            return submit_stage(self.cfg, stage.name, date)
        return stage.run(self.spark_for(stage.name), self.cfg, date) or {}


def require_inputs(cfg: Config, stage: Stage, date: dt.date) -> None:
    """DataError naming every required input of the stage that is missing."""
    from recpipe import paths

    missing = [p for p in stage.reads(cfg, date) if p.required and not paths.exists(p.location(cfg))]
    if missing:
        raise DataError(f"{stage.name} {date}: missing input " + ", ".join(f"{p.label} ({p.location(cfg)})"
                                                                          for p in missing))


def format_outcomes(outcomes: Sequence[StageOutcome]) -> str:
    """The summary table: date, stage, seconds, rows in and out, status."""
    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    lines = [f"{'date':<12}{'stage':<10}{'seconds':>9}{'rows in':>12}{'rows out':>12}  status"]
    for o in outcomes:
        note = f" ({o.note})" if o.note else ""
        lines.append(f"{o.date.isoformat():<12}{o.stage:<10}{o.seconds:>9.1f}{count(o.rows_in):>12}"
                     f"{count(o.rows_out):>12}  {o.status}{note}")
    return "\n".join(lines)
