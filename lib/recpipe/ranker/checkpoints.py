"""Checkpoints under the data root, one folder per (day, model):

    <root>/<tables.checkpoints>/ranker/dt=D/<model name>/
        epoch-0001.pt, epoch-0002.pt, ...   model state, optimizer state, step, epoch,
                                             model config, resolved config, job
        latest.json                          {"epoch": N, "file": "epoch-000N.pt"}

`latest.json` is written only after its checkpoint is complete, so a crash while saving
leaves the previous one as the latest. Reads and writes go through pyarrow's filesystems
(local, HDFS, S3).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from recpipe.paths import join_uri, read_bytes, read_json_or_none, write_bytes

LATEST = "latest.json"


def checkpoint_file(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save(folder: str, epoch: int, state: dict[str, Any]) -> str:
    """Write the checkpoint of `epoch`, then point `latest.json` at it; returns its location."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    location = join_uri(folder, checkpoint_file(epoch))
    write_bytes(location, buffer.getvalue())
    write_bytes(join_uri(folder, LATEST), json.dumps({"epoch": epoch, "file": checkpoint_file(epoch)}).encode())
    return location


def latest(folder: str) -> str | None:
    """The location of the newest complete checkpoint in `folder`, or None."""
    pointer = read_json_or_none(join_uri(folder, LATEST), "the checkpoint pointer")
    if not pointer or not isinstance(pointer.get("file"), str):
        return None
    return join_uri(folder, pointer["file"])


def at_epoch(folder: str, epoch: int) -> str:
    """The location of one epoch's checkpoint in `folder`."""
    return join_uri(folder, checkpoint_file(epoch))


def load(location: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save` (tensors, numbers, strings, lists and dicts only)."""
    return torch.load(io.BytesIO(read_bytes(location)), map_location=map_location, weights_only=True)
