"""`recpipe nightly --date D` and `recpipe backfill`: the scheduled run, safe to repeat.

- One run at a time: a file lock on the data root. The lock is an OS lock (fcntl), so
  it dies with its process; the owner file beside it names who holds it, and one left by
  a dead process is reported and taken over.
- Idempotent: every finished stage writes a marker `<root>/_markers/dt=D/<stage>.json`
  with a digest of its inputs (the input files' names and sizes, the stage's config, the
  digest of the stage before it). A rerun skips a stage whose digest did not change;
  `--force` reruns everything, `--from-stage S` reruns S and what follows.
- A failed stage stops the run, its marker is not written, and the summary names it.
- The tracking server (an http(s) tracking URI) is checked before any Spark work.
- With `submit.enabled` each stage is its own spark-submit application; the lock, markers
  and summary stay with this process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from typing import Iterator, Sequence

from recpipe import paths
from recpipe.config import Config
from recpipe.errors import ConfigError, RecpipeError
from recpipe.pipeline import STAGES, run_stage

log = logging.getLogger("recpipe.nightly")

SKIPPED, DONE, FAILED, NOT_RUN = "skipped", "ok", "failed", "not run"


class NightlyError(RecpipeError):
    """A nightly stage failed (the message names it) or the run could not start."""


class LockedError(RecpipeError):
    """Another nightly holds the lock on this data root."""


@dataclasses.dataclass
class StageOutcome:
    date: dt.date
    stage: str
    status: str
    seconds: float = 0.0
    rows_in: int | None = None
    rows_out: int | None = None
    note: str = ""


# --- the lock --------------------------------------------------------------------------

def lock_path(cfg: Config) -> str:
    """The lock file: under the root when it is local, else in the local temp dir (a lock
    must live on the machine that runs the nightly)."""
    root = cfg.paths.root
    if not paths.has_scheme(root) or root.startswith("file://"):
        return paths.join_uri(root.removeprefix("file://"), cfg.nightly.lock_file)
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"recpipe-{digest}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def nightly_lock(cfg: Config) -> Iterator[None]:
    """Hold the nightly lock of this root, or raise LockedError naming its holder."""
    from filelock import FileLock, Timeout

    path = lock_path(cfg)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    owner_file = path + ".owner"
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockedError(f"another nightly holds {path}: {_read_owner(owner_file) or 'owner unknown'}; "
                          "wait for it to finish") from None
    try:
        previous = _read_owner(owner_file)
        if previous:  # the OS lock was free, so whoever wrote this is gone
            log.warning("taking over a stale nightly lock left by %s (process %s)", previous,
                        "still alive, not holding it" if _alive(int(previous.get("pid", -1))) else "dead")
        with open(owner_file, "w") as out:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, out)
        yield
    finally:
        with suppress(FileNotFoundError):
            os.remove(owner_file)
        lock.release()


def _read_owner(owner_file: str) -> dict | None:
    try:
        with open(owner_file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --- markers and digests ---------------------------------------------------------------

def marker_location(cfg: Config, date: dt.date, stage: str) -> str:
    return paths.join_uri(cfg.paths.root, cfg.nightly.markers, f"dt={date.isoformat()}", f"{stage}.json")


def read_marker(cfg: Config, date: dt.date, stage: str) -> dict | None:
    location = marker_location(cfg, date, stage)
    if not paths.exists(location):
        return None
    return json.loads(paths.read_bytes(location))


def write_marker(cfg: Config, date: dt.date, stage: str, digest: str, outcome: StageOutcome) -> None:
    body = {"stage": stage, "date": date.isoformat(), "digest": digest, "seconds": round(outcome.seconds, 1),
            "rows_in": outcome.rows_in, "rows_out": outcome.rows_out,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    paths.write_bytes(marker_location(cfg, date, stage), json.dumps(body, indent=1).encode())


def remove_marker(cfg: Config, date: dt.date, stage: str) -> None:
    location = marker_location(cfg, date, stage)
    if paths.exists(location):
        fs, path = paths.filesystem_for(location)
        fs.delete_file(path)


def file_listing(location: str) -> list[tuple[str, int]]:
    """(relative name, size) of every file under a folder (empty when absent)."""
    from pyarrow import fs as pafs

    if not paths.exists(location):
        return []
    fs, root = paths.filesystem_for(location)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted((i.path[len(root):], i.size) for i in infos if i.type == pafs.FileType.File)


def days_back(date: dt.date, first_offset: int, last_offset: int = 0) -> list[dt.date]:
    return [date + dt.timedelta(days=k) for k in range(-first_offset, last_offset + 1)]


def stage_inputs(cfg: Config, date: dt.date, stage: str) -> dict:
    """What a stage reads, as file listings (and, for the registry stages, versions)."""
    table_days = {
        "clean": [("raw_events", [date]), ("events", days_back(date, cfg.clean.dedup_lookback_days, -1))],
        "features": [("events", days_back(date, cfg.features.train_days + max(cfg.features.lookback_days,
                                                                             *cfg.features.windows_days), 1))],
        "als": [("events", days_back(date, cfg.als.train_days))],
        "train": [("samples", [date]), ("als", days_back(date, cfg.features.train_days))],
        "promote": [("ranker_input", [date])],
        "score": [("als", [date]), ("sequences", [date]), ("user_features", [date]), ("item_features", [date])],
    }[stage]
    listing = {f"{table}/{day}": file_listing(cfg.table_path(table, day)) for table, days in table_days for day in days}
    if stage in ("promote", "score"):  # registry state: a new challenger or champion is a new input
        listing["challenger"] = _version(cfg, "challenger")
        listing["champion"] = _version(cfg, "champion")
    return listing


def _version(cfg: Config, alias: str) -> str:
    from recpipe.registry.promote import client_for, version_by_alias

    version = version_by_alias(client_for(cfg), alias)
    return version.version if version is not None else "none"


STAGE_SECTIONS = {"clean": "clean", "features": "features", "als": "als", "train": "ranker",
                  "promote": "promote", "score": "score"}


def stage_digest(cfg: Config, date: dt.date, stage: str, upstream: str) -> str:
    settings = cfg.to_dict()
    payload = {
        "stage": stage,
        "date": date.isoformat(),
        "config": {"paths": settings["paths"], "tables": settings["tables"],
                   STAGE_SECTIONS[stage]: settings[STAGE_SECTIONS[stage]]},
        "upstream": upstream,
        "inputs": stage_inputs(cfg, date, stage),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def row_counts(stage: str, summary: dict) -> tuple[int | None, int | None]:
    """Rows in and out of a stage, from its summary (None where it has no such count)."""
    def total(value) -> int | None:
        return int(sum(value.values())) if isinstance(value, dict) else (int(value) if value is not None else None)

    return {
        "clean": lambda s: (s.get("lines_read"), s.get("accepted")),
        "features": lambda s: (None, total(s.get("samples"))),
        "als": lambda s: (s.get("interactions"), s.get("candidate_rows")),
        "train": lambda s: (total(s.get("rows")), None),
        "promote": lambda s: (s.get("rows"), None),
        "score": lambda s: (None, s.get("rows")),
    }[stage](summary)


# --- the run ---------------------------------------------------------------------------

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
    raise NightlyError(f"MLflow tracking server {uri} is not reachable ({problem}); nothing was run. "
                       "Start it (`make mlflow-server`) or set mlflow.tracking_uri / MLFLOW_TRACKING_URI")


def stages_to_run(cfg: Config, from_stage: str | None) -> list[str]:
    stages = list(cfg.nightly.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"nightly.stages: unknown stage(s) {unknown} (known: {', '.join(STAGES)})")
    if from_stage is not None and from_stage not in stages:
        raise ConfigError(f"--from-stage {from_stage}: not one of nightly.stages ({', '.join(stages)})")
    return stages


def run_date(spark, cfg: Config, date: dt.date, *, force: bool = False, from_stage: str | None = None,
             skip: Sequence[str] = ()) -> list[StageOutcome]:
    """The nightly stages for one date. Raises NightlyError naming the stage that failed,
    with the outcomes so far attached as `.outcomes`."""
    stages = stages_to_run(cfg, from_stage)
    forced_from = stages.index(from_stage) if from_stage else (0 if force else len(stages))
    outcomes: list[StageOutcome] = []
    upstream = ""
    for position, stage in enumerate(stages):
        if stage in skip:
            outcomes.append(StageOutcome(date, stage, SKIPPED, note="not run for this date"))
            continue
        digest = stage_digest(cfg, date, stage, upstream)
        marker = read_marker(cfg, date, stage)
        if position < forced_from and marker is not None and marker["digest"] == digest:
            outcomes.append(StageOutcome(date, stage, SKIPPED, rows_in=marker.get("rows_in"),
                                         rows_out=marker.get("rows_out"), note="inputs unchanged"))
            upstream = digest
            continue
        remove_marker(cfg, date, stage)
        started = time.perf_counter()
        log.info("nightly %s: stage %s starting", date, stage)
        try:
            summary = run_stage(spark, cfg, stage, date)
        except Exception as err:
            outcomes.append(StageOutcome(date, stage, FAILED, time.perf_counter() - started, note=str(err)[:200]))
            outcomes += [StageOutcome(date, s, NOT_RUN) for s in stages[position + 1:]]
            error = NightlyError(f"nightly {date}: stage {stage} failed: {type(err).__name__}: {err}")
            error.outcomes = outcomes
            raise error from err
        outcome = StageOutcome(date, stage, DONE, time.perf_counter() - started, *row_counts(stage, summary))
        if stage == "promote":
            outcome.note = f"{summary.get('decision')}; champion {summary.get('champion')}"
        outcomes.append(outcome)
        # promote may move champion, one of its own inputs: its marker holds the state it left.
        upstream = stage_digest(cfg, date, stage, upstream) if stage == "promote" else digest
        write_marker(cfg, date, stage, upstream, outcome)
    return outcomes


def nightly(cfg: Config, dates: Sequence[dt.date], *, force: bool = False, from_stage: str | None = None,
            promote_last_only: bool = False) -> list[StageOutcome]:
    """Run the nightly for each date in order under the lock; print the summary table.

    With `promote_last_only` (backfill), `promote` runs only for the last date, and only
    when `nightly.promote_backfill` is set: backfilled versions are registered but never
    move `champion` otherwise.
    """
    from recpipe.submit import session_for

    stages_to_run(cfg, from_stage)
    check_tracking_server(cfg)
    outcomes: list[StageOutcome] = []
    with nightly_lock(cfg):
        spark = session_for(cfg, "nightly")
        try:
            for date in dates:
                skip = ()
                if promote_last_only and (date != dates[-1] or not cfg.nightly.promote_backfill):
                    skip = ("promote",)
                outcomes += run_date(spark, cfg, date, force=force, from_stage=from_stage, skip=skip)
        except NightlyError as err:
            outcomes += err.outcomes
            print(format_outcomes(outcomes))
            raise
    print(format_outcomes(outcomes))
    return outcomes


def format_outcomes(outcomes: Sequence[StageOutcome]) -> str:
    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    lines = [f"{'date':<12}{'stage':<10}{'seconds':>9}{'rows in':>12}{'rows out':>12}  status"]
    for o in outcomes:
        note = f" ({o.note})" if o.note else ""
        lines.append(f"{o.date.isoformat():<12}{o.stage:<10}{o.seconds:>9.1f}{count(o.rows_in):>12}"
                     f"{count(o.rows_out):>12}  {o.status}{note}")
    return "\n".join(lines)
