"""The process group, from the environment: torchrun and TorchDistributor set RANK,
WORLD_SIZE and LOCAL_RANK; without RANK the same code runs as one process."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import time
from contextlib import contextmanager
from typing import Any, Iterator

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


@contextmanager
def process_group(use_gpu: bool) -> Iterator[torch.device]:
    """This rank's device, inside the process group: joins it unless this process already
    is in it, and leaves only a group it joined (so several trainings can share one)."""
    joined = not td.is_initialized()
    dev = setup(use_gpu)
    try:
        yield dev
    finally:
        if joined:
            cleanup()


def all_reduce_sum(values: list[float], dev: torch.device) -> list[float]:
    """Sums of `values` over the ranks (the values themselves in one process)."""
    if not td.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    td.all_reduce(tensor)  # all-reduce: a sync point across ranks
    released(tensor)
    return tensor.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` as a list on rank 0 (None on the others). A sync point.

    What `torch.distributed.gather_object` does, on tensors this module owns so that it
    can wait for them to be `released` (the last exchanges of a run precede its exit).
    """
    if not td.is_initialized():
        return [obj]
    payload = _encode(obj)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=payload.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    td.all_gather(sizes, size)
    released(size, *sizes)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=payload.device)
    padded[: payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in lengths] if is_main() else None
    td.gather(padded, gathered, dst=0)
    released(padded, *(gathered or []))
    if not is_main():
        return None
    return [_decode(g[:n]) for g, n in zip(gathered, lengths)]


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank. A sync point; `torch.distributed.broadcast_object_list`
    on tensors this module owns, as in `gather_to_main`."""
    if not td.is_initialized():
        return obj
    payload = _encode(obj) if is_main() else None
    device = _exchange_device()
    size = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64, device=device)
    td.broadcast(size, src=0)
    released(size)
    data = payload if payload is not None else torch.empty(int(size), dtype=torch.uint8, device=device)
    td.broadcast(data, src=0)
    released(data)
    return obj if is_main() else _decode(data)


def released(*tensors: torch.Tensor, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until the backend's worker threads hold no reference to `tensors`.

    A blocking collective returns when its work is done, a moment before gloo's worker
    thread drops the work and the work's references to the tensors. If that drop is the
    last reference to a tensor made in Python, the worker thread must take the GIL to free
    it; when the process is already shutting down, that aborts it ("terminate called
    without an active exception", about one torchrun run in 40 here; the process group
    outlives destroy_process_group once DDP has used it, so its threads are still there).
    Waiting here leaves the last reference to this thread.
    """
    deadline = time.monotonic() + timeout_s
    while any(t._use_count() > 1 for t in tensors) and time.monotonic() < deadline:
        time.sleep(0.0001)


def _exchange_device() -> torch.device:
    """Where object exchanges live: NCCL moves CUDA tensors only, gloo CPU ones."""
    if td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(obj: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(_exchange_device())


def _decode(data: torch.Tensor) -> Any:
    return pickle.loads(data.cpu().numpy().tobytes())


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
