"""One run at a time on a data root: the root's lock, taken by the runner for every entry point.

The lock is an OS lock (fcntl, through `filelock`), so it dies with its process; the owner
file beside it names who holds it (process, host, command, since when), and one left by a
dead process is reported and taken over.

A stage that the runner hands to spark-submit runs in another process, which must not
wait for the lock its parent holds. The holder puts a random token in the owner file and
in its environment (`RECPIPE_LOCK_TOKEN`), which child processes inherit; a process whose
token matches the owner file's runs under its parent's lock. Anyone else, a `spark-submit
jobs/clean_events.py` started by hand among them, has to take the lock and is refused
while it is held.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager, suppress
from typing import Iterator

from recpipe import paths
from recpipe.config import Config
from recpipe.errors import RecpipeError

log = logging.getLogger("recpipe.lock")

TOKEN_ENV = "RECPIPE_LOCK_TOKEN"

_held: dict[str, int] = {}  # lock path -> how many nested holders in this process


class LockedError(RecpipeError):
    """Another run holds the lock on this data root."""


def lock_path(cfg: Config) -> str:
    """The lock file: under the root when it is local, else in the local temp dir (a lock
    must live on the machine that runs the pipeline)."""
    root = cfg.paths.root
    if not paths.has_scheme(root) or root.startswith("file://"):
        return paths.join_uri(root.removeprefix("file://"), cfg.nightly.lock_file)
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"recpipe-{digest}.lock")


def read_owner(cfg: Config) -> dict | None:
    """Who holds (or last held) the lock, as written in the owner file; None if nobody."""
    try:
        with open(lock_path(cfg) + ".owner") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def delegated(cfg: Config) -> bool:
    """True in a child process of the lock's holder (it carries the holder's token)."""
    token = os.environ.get(TOKEN_ENV)
    owner = read_owner(cfg)
    return bool(token) and owner is not None and owner.get("token") == token and _alive(int(owner.get("pid", -1)))


@contextmanager
def root_lock(cfg: Config, command: str) -> Iterator[None]:
    """Hold the lock of this root for the duration, or raise LockedError naming its holder.

    Re-entrant within a process (the nightly holds it around every stage it runs), and
    a no-op in a child process of the holder (see the module's docstring).
    """
    path = lock_path(cfg)
    if _held.get(path) or delegated(cfg):
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    with _os_lock(path, command):
        _held[path] = 1
        try:
            yield
        finally:
            _held.pop(path, None)


@contextmanager
def _os_lock(path: str, command: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    owner_file = path + ".owner"
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockedError(f"another run holds {path}: {_holder(owner_file) or 'owner unknown'}; "
                          "wait for it to finish") from None
    token = secrets.token_hex(16)
    try:
        previous = _read(owner_file)
        if previous:  # the OS lock was free, so whoever wrote this is gone
            log.warning("taking over a stale lock left by %s (process %s)", previous,
                        "still alive, not holding it" if _alive(int(previous.get("pid", -1))) else "dead")
        _write_owner(owner_file, {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                  "token": token})
        os.environ[TOKEN_ENV] = token  # inherited by the spark-submit applications this run starts
        yield
    finally:
        os.environ.pop(TOKEN_ENV, None)
        with suppress(FileNotFoundError):
            os.remove(owner_file)
        lock.release()


def _write_owner(owner_file: str, owner: dict) -> None:
    temporary = f"{owner_file}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        json.dump(owner, out)
    os.replace(temporary, owner_file)  # a reader sees the old owner or the new one, whole


def _holder(owner_file: str, wait_s: float = 5.0) -> dict | None:
    """The owner of a lock just found taken; its holder may not have written the file yet."""
    deadline = time.monotonic() + wait_s
    while (owner := _read(owner_file)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return owner


def _read(owner_file: str) -> dict | None:
    try:
        with open(owner_file) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    owner.pop("token", None)  # the token is for the holder's children, not for messages
    return owner


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_command(argv: list[str] | None = None) -> str:
    """This process's command line, for the owner file."""
    return " ".join(argv if argv is not None else [os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]
