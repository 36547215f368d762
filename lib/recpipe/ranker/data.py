"""Reading `ranker_input` for training (Petastorm, sharded by rank) and for evaluation.

Training reads an unbounded stream (`num_epochs=None`): each rank reads its own row
groups (Petastorm's `cur_shard`/`shard_count`), round after round, and the trainer takes
the same fixed number of batches per epoch on every rank. A rank whose shard is smaller
simply wraps around sooner, so no rank can run out of data and leave the others waiting
in an all-reduce.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from recpipe.paths import has_scheme
from recpipe.splits import FEATURES, TRAIN_COLUMNS, schema_columns, stored_columns


def dataset_url(location: str) -> str:
    """A Petastorm dataset URL for a local path or a URI (Hadoop's s3a is plain s3 to it)."""
    if not has_scheme(location):
        return "file://" + os.path.abspath(location)
    if location.startswith("s3a://"):
        return "s3://" + location[len("s3a://"):]
    return location


# Petastorm 0.12 drives pyarrow 14 through its legacy API (the reason pyarrow is pinned):
# one FutureWarning per row group read is noise, not news. Its loader hands read-only
# numpy arrays to torch.as_tensor; the shuffling buffer copies them before any write.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


class TrainStream:
    """Shuffled training batches of one rank's shard, without end.

    The row groups are dealt to the ranks in a seeded random order, which each rank keeps
    for every pass, and the rows inside each row group are shuffled anew each time it is
    read (seeded: Petastorm's `shuffle_rows`). Every row group is an even sample of its
    split (the writer deals rows to files round-robin), so this mixes as well as a
    shuffle buffer without its cost. Rows can also go through
    Petastorm's shuffling queue (`shuffle_queue` > 0), which draws from torch's global
    generator: seed it (seed + rank) before opening; it costs the loader about three
    quarters of its speed on the wide layout (one shuffle per stored column).
    Use as a context manager; `next()` gives a dict of tensors keyed by column, the wide
    columns stacked back into (batch, width) tensors.

    Args:
        location: the split's folder.
        batch_size: rows per batch on this rank (the global batch / world size).
        rank: this rank, Petastorm's `cur_shard`.
        world: the number of ranks, Petastorm's `shard_count`.
        seed: seed of the row-group order and of the rows' order inside them. It must be
            the same on every rank: Petastorm shuffles the row groups with it before it
            deals them to the shards (a seed per rank would make shards overlap).
        shuffle_queue: capacity of the row shuffling queue, in rows.
        workers: Petastorm reader threads. With one, the order of the batches is fixed by
            the seed; with more, threads finish row groups in varying order and each has
            its own row shuffler, so runs no longer repeat.
        columns: the columns to read.
    """

    def __init__(self, location: str, batch_size: int, rank: int, world: int, seed: int, shuffle_queue: int,
                 workers: int = 2, columns: Sequence[str] = TRAIN_COLUMNS):
        from petastorm import make_batch_reader
        from petastorm.pytorch import BatchedDataLoader

        self._columns = tuple(columns)
        self._stored = {name: stored_columns(schema_columns(location), [name]) for name in self._columns}
        self._reader = make_batch_reader(
            dataset_url(location),
            schema_fields=[c for name in self._columns for c in self._stored[name]],
            num_epochs=None,
            cur_shard=rank,
            shard_count=world,
            # The row groups keep one order (shuffled once, by the sharding with `seed`):
            # Petastorm 0.12 reshuffles them at each pass on every retry while its
            # ventilation queue is full, so a per-pass shuffle depends on thread timing and
            # two runs with one seed would diverge from the second pass on.
            shuffle_row_groups=False,
            shuffle_rows=True,
            seed=seed,
            workers_count=workers,
        )
        self._batch_size = batch_size
        if shuffle_queue > 0:
            loader = BatchedDataLoader(self._reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_queue)
            self._batches: Iterator[Mapping[str, torch.Tensor]] = (self._stacked(b) for b in loader)
        else:
            self._batches = self._row_group_batches()

    def __enter__(self) -> "TrainStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return dict(next(self._batches))

    def _row_group_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches cut straight from the reader's row groups (numpy columns, rows already
        shuffled), carrying the rest of a row group into the next batch. Petastorm's
        BatchedDataLoader does the same per stored column, and on a table of ~140 narrow
        columns that bookkeeping halved the loader's speed, so it is used only for its
        shuffling queue."""
        pending: list[dict[str, np.ndarray]] = []
        rows = 0
        for group in self._reader:
            arrays = self._stacked(group._asdict())
            pending.append(arrays)
            rows += len(next(iter(arrays.values())))
            while rows >= self._batch_size:
                merged = pending[0] if len(pending) == 1 else {
                    name: np.concatenate([p[name] for p in pending]) for name in self._columns}
                yield {name: torch.as_tensor(values[:self._batch_size]) for name, values in merged.items()}
                pending = [{name: values[self._batch_size:] for name, values in merged.items()}]
                rows -= self._batch_size

    def _stacked(self, columns: Mapping) -> dict:
        """The requested columns from stored ones: wide columns stacked to (rows, width)."""
        stack = torch.stack if isinstance(next(iter(columns.values())), torch.Tensor) else np.stack
        return {name: columns[stored[0]] if stored == [name] else stack([columns[c] for c in stored], 1)
                for name, stored in self._stored.items()}

    def close(self) -> None:
        self._reader.stop()
        self._reader.join()


def tensor_batches(arrays: Mapping[str, np.ndarray], batch_size: int, columns: Sequence[str] = FEATURES
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive batches of in-memory arrays as tensors (for evaluation and scoring)."""
    rows = len(next(iter(arrays.values()))) if arrays else 0
    for start in range(0, rows, batch_size):
        yield {name: torch.as_tensor(np.ascontiguousarray(arrays[name][start:start + batch_size])) for name in columns}
