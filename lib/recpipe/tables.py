"""Table versions, committed atomically on any filesystem.

A stage never writes into a folder that readers use. Each of its writes goes to a new,
hidden version folder of the table, and the stage's tables are committed together as
one unit when it ends:

    lake/events/_v-20261114T020311-9f3a1c2e/dt=2026-11-14/part-….parquet   a version
    lake/events/_committed.json     {"days": {"2026-11-14": {"version": …, "previous": …}}}
    <root>/_commits/<id>.open.json  the version folders a running commit has made
    <root>/_commits/<id>.json       its journal: the new pointers of every table it wrote

The journal is the commit point. It is one small file, written whole (temporary name and
rename locally and on HDFS, one PUT on an object store; see `paths.write_bytes`). Then
each table's `_committed.json` is rewritten from it, the versions no pointer needs any
more are deleted, and the journal goes. Readers take a pending journal's pointers over a
table's own, so they see the commit as soon as it is made, and nothing of it before:

- killed before the journal: the new version folders are orphans; the next run (the
  runner calls `recover` under the lock) deletes them and says so;
- killed after it: the next run applies the journal again (it is idempotent) and
  collects the garbage.

Each day keeps its previous version too, so a reader that resolved a pointer just
before a commit still finds its files; the version before that is deleted.

Sub-tables (`lake/als/{dt}/user_factors`) share the pointer of their family root
(`lake/als`): one version holds all of a day's sub-tables. A table written before
versions existed (or by a tool that does not commit, such as the raw collector) has no
`_committed.json`: its `dt=D` folders are read as they are, and a first commit takes
them over as the days' current versions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import signal
import uuid
from typing import Iterator

from recpipe import paths
from recpipe.config import DAY_SLOT, Config
from recpipe.errors import DataError
from recpipe.schema import DT

log = logging.getLogger("recpipe.tables")

POINTER_FILE = "_committed.json"
COMMITS_DIR = "_commits"
VERSION_PREFIX = "_v-"
LEGACY = ""  # the version of a day written straight into <root>/dt=D
FAULT_ENV = "RECPIPE_FAULT_AT"  # fault tests: SIGKILL this process at a named step of a commit


# --- where things are ------------------------------------------------------------------

def family(cfg: Config, name: str) -> tuple[str, str]:
    """(root, suffix) of a table: the folder that holds its versions and pointer, and the
    path of the table inside one day of a version ("" unless it is a `{dt}` sub-table)."""
    location = cfg.table_path(name) if DAY_SLOT not in getattr(cfg.tables, name, "") else None
    if location is not None:
        return location, ""
    before, _, after = getattr(cfg.tables, name).partition(DAY_SLOT)
    return paths.join_uri(cfg.paths.root, before.rstrip("/")), after.strip("/")


def version_location(root: str, suffix: str, date: dt.date, version: str) -> str:
    day = f"{DT}={date.isoformat()}"
    parts = [day] if version == LEGACY else [f"{VERSION_PREFIX}{version}", day]
    return paths.join_uri(root, *parts, *([suffix] if suffix else []))


def commits_dir(cfg: Config) -> str:
    return paths.join_uri(cfg.paths.root, COMMITS_DIR)


# --- reading pointers ------------------------------------------------------------------

def read_pointers(cfg: Config, root: str) -> dict[str, dict]:
    """Day → {"version", "previous"} of a family root, a pending journal's over the
    table's own; for a table never committed, its `dt=` folders as legacy versions.

    Raises:
        DataError: the root holds committed versions but its pointer is gone.
    """
    for journal in reversed(pending_journals(cfg)):
        if root in journal["pointers"]:
            return journal["pointers"][root]
    body = _read_pointer_file(paths.join_uri(root, POINTER_FILE))
    if body is not None:
        return body["days"]
    uncommitted = {name[:-len(".open.json")] for name in _listing(commits_dir(cfg)) if name.endswith(".open.json")}
    names = _listing(root)
    if any(name.startswith(VERSION_PREFIX) and name[len(VERSION_PREFIX):] not in uncommitted for name in names):
        # Without its pointer a table would read as empty, and a dictionary would start
        # numbering again from 1: stop instead.
        raise DataError(f"{root} holds table versions but no readable {POINTER_FILE}; restore it from a backup "
                        f"(or remove the {VERSION_PREFIX}* folders to start the table again)")
    return {day.isoformat(): {"version": LEGACY, "previous": None} for day in _days_of(names)}


_POINTER_CACHE: dict[str, tuple[tuple, dict]] = {}  # local pointer files, by location: (mtime, size), body


def _read_pointer_file(location: str) -> dict | None:
    """A table's pointer file, parsed; a local one is parsed again only when it changed
    (a history run asks for thousands of days of a table whose pointer lists them all)."""
    from pyarrow import fs as pafs

    fs, path = paths.filesystem_for(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        return paths.read_json_or_none(location, "the table pointer")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    stamp = (info.mtime_ns, info.size)
    cached = _POINTER_CACHE.get(location)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    body = paths.read_json_or_none(location, "the table pointer")
    if body is not None:
        _POINTER_CACHE[location] = (stamp, body)
    return body


def pending_journals(cfg: Config) -> list[dict]:
    """Journals of commits that were made but not yet applied (a run died after its
    commit point), oldest first."""
    return [body for name in _listing(commits_dir(cfg)) if name.endswith(".json") and not name.endswith(".open.json")
            if (body := paths.read_json_or_none(paths.join_uri(commits_dir(cfg), name), "the commit journal"))]


def _listing(folder: str) -> list[str]:
    from pyarrow import fs as pafs

    fs, path = paths.filesystem_for(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def legacy_days(root: str) -> list[dt.date]:
    """The `dt=` folders straight under a root (a table that is not versioned)."""
    return _days_of(_listing(root))


def _days_of(names: list[str]) -> list[dt.date]:
    days = []
    for name in names:
        if name.startswith(f"{DT}="):
            try:
                days.append(dt.date.fromisoformat(name[len(DT) + 1:]))
            except ValueError:
                continue
    return sorted(days)


def committed_days(cfg: Config, name: str) -> list[dt.date]:
    """The days a table holds for its readers, sorted (the active commit's writes included)."""
    return sorted(committed_locations(cfg, name))


def committed_locations(cfg: Config, name: str) -> dict[dt.date, str]:
    """Every day a table holds for its readers, with the folder they read it from (one
    pointer read for all of them)."""
    root, suffix = family(cfg, name)
    return {dt.date.fromisoformat(day): version_location(root, suffix, dt.date.fromisoformat(day), entry["version"])
            for day, entry in _pointers_seen_by_readers(cfg, root).items() if entry["version"] is not None}


def committed_location(cfg: Config, name: str, date: dt.date | None = None) -> str | None:
    """Where readers find a table (or its day D): the committed version's folder, the
    active commit's own for what it has written, None when there is nothing."""
    if date is None:
        return cfg.table_path(name) if DAY_SLOT not in getattr(cfg.tables, name) else None
    root, suffix = family(cfg, name)
    entry = _entry_seen_by_readers(cfg, root, date)
    if entry is None or entry["version"] is None:
        return None
    return version_location(root, suffix, date, entry["version"])


def _entry_seen_by_readers(cfg: Config, root: str, date: dt.date) -> dict | None:
    """One day's pointer entry; for a table that is not versioned (raw data: thousands of
    `dt=` folders in a history) one existence check instead of a listing."""
    active = _ACTIVE.get(cfg.paths.root)
    own = active.entries(root) if active is not None else {}
    if date.isoformat() in own:
        return own[date.isoformat()]
    if _read_pointer_file(paths.join_uri(root, POINTER_FILE)) is None and not pending_journals(cfg):
        return {"version": LEGACY} if paths.exists(version_location(root, "", date, LEGACY)) else None
    return _pointers_seen_by_readers(cfg, root).get(date.isoformat())


def reader_location(cfg: Config, name: str, date: dt.date | None = None) -> str:
    """`committed_location`, or where the table would be if it is absent (for existence
    checks and messages: nothing is there)."""
    return committed_location(cfg, name, date) or cfg.table_path(name, date)


def read_arrow(cfg: Config, name: str, columns: list[str] | None = None):
    """Every committed day of a table as one Arrow table with its `dt` column, without
    Spark (notebooks and tools: a plain Parquet read of the table's folder sees only
    hidden version folders)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    parts = []
    for day, location in sorted(committed_locations(cfg, name).items()):
        fs, path = paths.filesystem_for(location)
        table = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)
        parts.append(table.append_column(DT, pa.array([day] * table.num_rows, pa.date32())))
    if not parts:
        raise DataError(f"table {name!r} has no committed day at {cfg.table_path(name)}")
    return pa.concat_tables(parts)


def _pointers_seen_by_readers(cfg: Config, root: str) -> dict[str, dict]:
    pointers = read_pointers(cfg, root)
    active = _ACTIVE.get(cfg.paths.root)
    if active is not None:
        pointers = {**pointers, **active.entries(root)}
    return pointers


# --- writing: one commit per stage -----------------------------------------------------

class Commit:
    """The versions one stage writes, made visible together by `publish`."""

    def __init__(self, cfg: Config, label: str):
        self.cfg = cfg
        self.label = label
        self.id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self._written: dict[str, set[str]] = {}  # root -> days written
        self._removed: dict[str, set[str]] = {}  # root -> days removed

    def version_root(self, name: str) -> str:
        """The folder a partitioned write of table `name` goes to (its `dt=` below it);
        call `wrote` with the days afterwards."""
        root, _ = family(self.cfg, name)
        self._register(root)
        return paths.join_uri(root, f"{VERSION_PREFIX}{self.id}")

    def day_location(self, name: str, date: dt.date) -> str:
        """The folder this commit writes day D of table `name` to."""
        root, suffix = family(self.cfg, name)
        self._register(root)
        self._written[root].add(date.isoformat())
        self._removed.get(root, set()).discard(date.isoformat())
        return version_location(root, suffix, date, self.id)

    def wrote(self, name: str, days: list[dt.date] | None = None) -> list[dt.date]:
        """Record the days a write produced (None: whatever `dt=` folders the version holds)
        and return them."""
        root, _ = family(self.cfg, name)
        self._register(root)
        if days is None:
            days = legacy_days(paths.join_uri(root, f"{VERSION_PREFIX}{self.id}"))
        for day in days:
            self._written[root].add(day.isoformat())
            self._removed.get(root, set()).discard(day.isoformat())
        fault_point(f"after-write:{name}")
        return list(days)

    def remove(self, name: str, date: dt.date) -> None:
        """Day D of table `name` has no rows any more: readers will not find it."""
        root, _ = family(self.cfg, name)
        self._register(root)
        self._written[root].discard(date.isoformat())
        self._removed.setdefault(root, set()).add(date.isoformat())

    def entries(self, root: str) -> dict[str, dict]:
        """What this commit will set, day by day, in one root's pointer (readers in the same
        stage see it already)."""
        entries = {day: {"version": self.id} for day in self._written.get(root, ())}
        entries.update({day: {"version": None} for day in self._removed.get(root, ())})
        return entries

    def _register(self, root: str) -> None:
        if root not in self._written:
            self._written[root] = set()
            # Written before any folder of the version exists: a run killed from here on
            # leaves a record of what to clean up.
            paths.write_bytes(self._open_file(), json.dumps({"label": self.label, "roots": sorted(self._written)}).encode())

    def _open_file(self) -> str:
        return paths.join_uri(commits_dir(self.cfg), f"{self.id}.open.json")

    def publish(self) -> None:
        """Make every version of this commit the committed one, at once."""
        touched = sorted(root for root in self._written if self._written[root] or self._removed.get(root))
        if not touched:
            self.discard()
            return
        fault_point("before-journal")
        pointers, garbage = {}, []
        for root in touched:
            pointers[root], dropped = next_pointers(self.cfg, root, self.entries(root))
            garbage += dropped
        journal = {"id": self.id, "label": self.label, "pointers": pointers, "garbage": garbage,
                   "version_roots": [paths.join_uri(root, f"{VERSION_PREFIX}{self.id}") for root in self._written]}
        paths.write_bytes(journal_location(self.cfg, self.id), json.dumps(journal, sort_keys=True).encode())
        log.info("%s: committed %s (%s)", self.label, self.id, ", ".join(_relative(self.cfg, r) for r in touched))
        fault_point("after-journal")
        apply_journal(self.cfg, journal)

    def discard(self) -> None:
        """Delete what this commit wrote (a failed stage): readers never saw it."""
        for root in self._written:
            paths.delete_dir(paths.join_uri(root, f"{VERSION_PREFIX}{self.id}"))
        _delete_file(self._open_file())


def next_pointers(cfg: Config, root: str, entries: dict[str, dict]) -> tuple[dict, list[str]]:
    """A root's pointer after a commit of `entries`, and the folders it no longer needs:
    each changed day keeps its version as `previous`, and loses the one before."""
    current = read_pointers(cfg, root)  # a first commit takes over the days written before versions
    updated, garbage = dict(current), []
    for day, entry in entries.items():
        before = current.get(day, {"version": None, "previous": None})
        if before["version"] == entry["version"]:
            continue
        updated[day] = {"version": entry["version"], "previous": before["version"]}
        if before["previous"] not in (None, entry["version"], before["version"]):
            garbage.append(version_location(root, "", dt.date.fromisoformat(day), before["previous"]))
    return {day: e for day, e in updated.items() if e["version"] is not None or e["previous"] is not None}, garbage


def apply_journal(cfg: Config, journal: dict) -> None:
    """Rewrite each table's pointer from a journal, delete its garbage and then the journal
    (safe to repeat after a crash at any point of it)."""
    for root, pointers in journal["pointers"].items():
        paths.write_bytes(paths.join_uri(root, POINTER_FILE),
                          json.dumps({"days": pointers}, indent=0, sort_keys=True).encode())
    fault_point("after-pointers")
    for number, location in enumerate(journal["garbage"]):
        paths.delete_dir(location)
        if number == 0:
            fault_point("during-gc")
    for version_root in _emptied_version_roots(journal["garbage"]):
        if not legacy_days(version_root):
            paths.delete_dir(version_root)
    _delete_file(journal_location(cfg, journal["id"]))
    _delete_file(paths.join_uri(commits_dir(cfg), f"{journal['id']}.open.json"))


def _emptied_version_roots(garbage: list[str]) -> set[str]:
    return {location.rsplit("/", 1)[0] for location in garbage
            if location.rsplit("/", 2)[-2].startswith(VERSION_PREFIX)}


def journal_location(cfg: Config, commit_id: str) -> str:
    return paths.join_uri(commits_dir(cfg), f"{commit_id}.json")


def recover(cfg: Config) -> None:
    """Finish or undo the commits of runs that died: call it holding the root's lock.

    A journal is applied (the commit was made); a commit that never reached its journal
    has its version folders deleted, and each is reported.
    """
    names = _listing(commits_dir(cfg))
    journals = {name[:-len(".json")] for name in names if name.endswith(".json") and not name.endswith(".open.json")}
    for commit_id in sorted(journals):
        journal = paths.read_json_or_none(journal_location(cfg, commit_id), "the commit journal")
        if journal is not None:
            log.warning("completing commit %s of %s, made by a run that stopped before it was applied",
                        commit_id, journal["label"])
            apply_journal(cfg, journal)
    for name in names:
        commit_id = name[:-len(".open.json")] if name.endswith(".open.json") else None
        if commit_id is None or commit_id in journals:
            continue
        record = paths.read_json_or_none(paths.join_uri(commits_dir(cfg), name), "the open-commit record") or {}
        for root in record.get("roots", []):
            location = paths.join_uri(root, f"{VERSION_PREFIX}{commit_id}")
            if paths.exists(location):
                log.warning("removing %s: written by %s, which stopped before its commit; readers never saw it",
                            location, record.get("label", "a run"))
                paths.delete_dir(location)
        _delete_file(paths.join_uri(commits_dir(cfg), name))


_ACTIVE: dict[str, Commit] = {}  # data root -> the commit of the stage running in this process


def active(cfg: Config) -> Commit | None:
    """The commit of the stage running in this process for cfg's root, if any."""
    return _ACTIVE.get(cfg.paths.root)


@contextlib.contextmanager
def committing(cfg: Config, label: str) -> Iterator[Commit]:
    """One commit around a stage: its writes are published together when the block ends,
    and deleted if it raises. Inside, io's reads see what the stage has written so far."""
    if cfg.paths.root in _ACTIVE:  # nested (a stage calling another's writer): one commit
        yield _ACTIVE[cfg.paths.root]
        return
    commit = Commit(cfg, label)
    _ACTIVE[cfg.paths.root] = commit
    try:
        yield commit
    except BaseException:
        _ACTIVE.pop(cfg.paths.root, None)
        commit.discard()
        raise
    _ACTIVE.pop(cfg.paths.root, None)
    commit.publish()


def one_commit(run):
    """Decorate a stage's `run(spark, cfg, date_or_first, ...)` so that everything it writes
    is committed as one unit, however it is called (by the runner or directly)."""
    @functools.wraps(run)
    def committed(spark, cfg: Config, *args, **kwargs):
        stage = run.__module__.rsplit(".", 1)[-1]
        with committing(cfg, " ".join([stage, *map(str, args)])):
            return run(spark, cfg, *args, **kwargs)
    return committed


def fault_point(step: str) -> None:
    """Fault tests name a step in $RECPIPE_FAULT_AT; the process then dies there as if
    the machine had (SIGKILL: no cleanup, no `finally`)."""
    if os.environ.get(FAULT_ENV) == step:
        log.warning("fault injected at %s: killing this process", step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _delete_file(location: str) -> None:
    fs, path = paths.filesystem_for(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def _relative(cfg: Config, location: str) -> str:
    return location[len(cfg.paths.root):].lstrip("/") or location
