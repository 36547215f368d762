"""Completion markers: `<root>/_markers/dt=D/<stage>.json`, written after a stage's outputs.

A marker records the stage's state when it finished, in parts: the values of every config
key it reads, a digest of each input partition's file listing (names and sizes), the
registry versions it depends on, and a digest of its outputs' listings. A stage is done
for D when every part still matches; the first part that does not is the reason to rerun.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Sequence

from recpipe import paths
from recpipe.config import Config
from recpipe.stage import Partition, Stage


def marker_location(cfg: Config, date: dt.date, stage: str) -> str:
    return paths.join_uri(cfg.paths.root, cfg.nightly.markers, f"dt={date.isoformat()}", f"{stage}.json")


def read_marker(cfg: Config, date: dt.date, stage: str) -> dict | None:
    """The marker, or None when there is none or it cannot be read (reported; a rerun replaces it)."""
    return paths.read_json_or_none(marker_location(cfg, date, stage), f"the {stage} marker of {date}")


def write_marker(cfg: Config, date: dt.date, stage: str, body: dict) -> None:
    paths.write_bytes(marker_location(cfg, date, stage), json.dumps(body, indent=1, sort_keys=True, default=str).encode())


def remove_marker(cfg: Config, date: dt.date, stage: str) -> None:
    location = marker_location(cfg, date, stage)
    if paths.exists(location):
        fs, path = paths.filesystem_for(location)
        fs.delete_file(path)


def file_listing(location: str) -> list[tuple[str, int]]:
    """(relative name, size) of every file under a folder, or of the file itself (empty when absent)."""
    from pyarrow import fs as pafs

    if not paths.exists(location):
        return []
    fs, root = paths.filesystem_for(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [("", info.size)]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted((i.path[len(root):], i.size) for i in infos if i.type == pafs.FileType.File)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def listings_digest(cfg: Config, partitions: Sequence[Partition]) -> dict[str, str]:
    return {p.label: _digest(file_listing(p.location(cfg))) for p in partitions}


def stage_state(cfg: Config, stage: Stage, date: dt.date) -> dict[str, Any]:
    """What the stage's marker records, as of now."""
    return {
        "config": stage.config_values(cfg),
        "inputs": listings_digest(cfg, stage.reads(cfg, date)),
        "registry": stage.registry(cfg, date),
        "outputs": listings_digest(cfg, stage.writes(cfg, date)),
    }


def why_rerun(marker: dict | None, state: dict[str, Any]) -> str | None:
    """None when the marker matches the state; else why the stage must run again."""
    if marker is None or "state" not in marker:
        return "not done yet"
    done = marker["state"]
    for part, what in (("config", "config"), ("inputs", "input"), ("registry", "registry alias"),
                       ("outputs", "output")):
        before, now = done.get(part, {}), state[part]
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            return f"{what} changed: {shown}"
    return None


def marker_body(stage: str, date: dt.date, state: dict, seconds: float, rows: tuple, summary_note: str) -> dict:
    return {"stage": stage, "date": date.isoformat(), "state": state, "seconds": round(seconds, 1),
            "rows_in": rows[0], "rows_out": rows[1], "note": summary_note,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
