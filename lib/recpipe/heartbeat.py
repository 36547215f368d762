"""A log line every `logging.heartbeat_seconds` while a stage runs, so that a long stage
shows that it is alive and what it is at:

    2026-11-14 02:10:31 INFO recpipe.heartbeat: clean 2026-11-14: still running (60 s); Spark stage 12 (parquet):
    5/8 tasks done, 2 running

    with heartbeat("clean 2026-11-14", 30, lambda: session_or_none):
        ...
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger("recpipe.heartbeat")

JOIN_TIMEOUT_S = 10.0  # a beat in progress asks Spark for its status, which answers at once


@contextmanager
def heartbeat(what: str, every_s: float, spark: Callable[[], Any] = lambda: None) -> Iterator[None]:
    """Log `<what>: still running (<seconds> s)` every `every_s` seconds until the block
    ends; nothing when `every_s` is 0.

    `spark` returns the session once there is one, else None: the beat never starts one,
    and a stage may start its session after the first beats. The active Spark stages' task
    counts are added to the line.
    """
    if every_s <= 0:
        yield
        return
    stop = threading.Event()
    beats = threading.Thread(target=_beat, args=(what, every_s, spark, stop), name=f"heartbeat {what}", daemon=True)
    beats.start()
    try:
        yield
    finally:
        stop.set()
        beats.join(JOIN_TIMEOUT_S)


def _beat(what: str, every_s: float, spark: Callable[[], Any], stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(every_s):
        progress = spark_progress(spark())
        log.info("%s: still running (%.0f s)%s", what, time.monotonic() - started, f"; {progress}" if progress else "")


def spark_progress(spark: Any) -> str:
    """The active Spark stages and their tasks, e.g. `Spark stage 12 (parquet): 5/8 tasks
    done, 2 running`; empty without a session or an active stage."""
    if spark is None:
        return ""
    try:
        tracker = spark.sparkContext.statusTracker()
        stages = [tracker.getStageInfo(stage_id) for stage_id in sorted(tracker.getActiveStageIds())]
    except Exception as err:  # a session stopping under the beat: the beat must never fail the stage
        log.debug("no Spark status: %s", err)
        return ""
    # A stage's name is its action and call site ("parquet at NativeMethodAccessorImpl.java:0").
    return "; ".join(f"Spark stage {s.stageId} ({s.name.split(' at ')[0]}): {s.numCompletedTasks}/{s.numTasks} "
                     f"tasks done, {s.numActiveTasks} running" for s in stages if s is not None)
