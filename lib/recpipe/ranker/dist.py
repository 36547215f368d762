"""The process group, from the environment: torchrun and TorchDistributor set RANK,
WORLD_SIZE and LOCAL_RANK; without RANK the same code runs as one process."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import torch
import torch.distributed as td


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return "RANK" in os.environ and world_size() > 1


def is_main() -> bool:
    return rank() == 0


def device(use_gpu: bool) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when asked for and present, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def setup(use_gpu: bool, timeout_s: int = 1800) -> torch.device:
    """Join the process group (NCCL on GPU, gloo on CPU) and return this rank's device.

    On CPU the cores are shared between the ranks of this host, so each takes its share
    of the intra-op threads instead of all of them; OMP_NUM_THREADS, when set (torchrun
    sets 1), wins. Oversubscribed OpenMP threads spin while they wait for each other: on a
    busy 2-core machine one thread trained several times faster than two.
    """
    dev = device(use_gpu)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if is_distributed() and not td.is_initialized():
        td.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=dt.timedelta(seconds=timeout_s))
    return dev


def cleanup() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def all_reduce_sum(values: list[float], dev: torch.device) -> list[float]:
    """Sums of `values` over the ranks (the values themselves in one process)."""
    if not td.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    td.all_reduce(tensor)  # all-reduce: a sync point across ranks
    return tensor.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` as a list on rank 0 (None on the others)."""
    if not td.is_initialized():
        return [obj]
    out = [None] * world_size() if is_main() else None
    td.gather_object(obj, out, dst=0)  # a sync point: every rank must call it
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not td.is_initialized():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)  # a sync point
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each forward, but the last forward of an epoch
    updates them on each rank from its own batch; evaluation and checkpoints need one set.
    """
    if td.is_initialized():
        for buffer in module.buffers():
            td.broadcast(buffer, src=0)  # a sync point


def barrier() -> None:
    if td.is_initialized():
        td.barrier()
