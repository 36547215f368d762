"""Reading one split of `ranker_input/dt=D` (Parquet) into numpy arrays, with pyarrow only.

Used wherever every row of a split is needed at once: evaluation after training, the
promotion gate, the report. Training streams its rows through Petastorm instead
(`recpipe.ranker.data`).

The layout is wide: each fixed-length array of a sample (`hist_items`, `hist_cats`,
`hist_brands`, `user_dense`, `item_dense`) is stored as one scalar column per position,
`hist_items__00` … `hist_items__49`. Petastorm's batch reader turns a scalar column
into a numpy array without a Python step, while a list column costs it one Python
object per row and a `vstack` (it read at a quarter of pyarrow's speed). Readers here
stack the columns back into (rows, width) arrays; a split written with list columns
(older versions, the toy splits of the tests) reads the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from recpipe.config import Config
from recpipe.paths import filesystem_for
from recpipe.tables import reader_location

LABEL = "label"
FEATURES = ("item_idx", "cat_idx", "brand_idx", "hist_items", "hist_cats", "hist_brands", "hist_len", "user_dense",
            "item_dense", "als_score", "position")
TRAIN_COLUMNS = (*FEATURES, LABEL)
EVAL_EXTRA = ("event_id", "user_idx")  # kept for grouping and joining the truth; not tensors
# Stored wide, a column per position.
ARRAY_COLUMNS = ("hist_items", "hist_cats", "hist_brands", "user_dense", "item_dense")


def wide_name(column: str, position: int) -> str:
    """The stored column of one position of an array column: hist_items__07."""
    return f"{column}__{position:02d}"


def stored_columns(available: Sequence[str], columns: Sequence[str], last: int = 0) -> list[str]:
    """The stored columns that hold `columns`: the column itself, else its wide columns in
    position order (only the last `last` positions when it is above 0); KeyError naming a
    column that is neither."""
    out = []
    for name in columns:
        if name in available:
            out.append(name)
            continue
        wide = sorted(c for c in available if c.startswith(name + "__") and c[len(name) + 2:].isdigit())
        if not wide:
            raise KeyError(f"column {name!r} is not in the split (has {sorted(available)[:12]}...)")
        out += sorted(wide, key=lambda c: int(c[len(name) + 2:]))[-last if last > 0 else 0:]
    return out


def split_location(cfg: Config, date: dt.date, split: str) -> str:
    """The committed folder of one split of `ranker_input` for day D (`tables.ranker_input_<split>`);
    where it would be, when D has no such split."""
    return reader_location(cfg, f"ranker_input_{split}", date)


def row_groups(location: str) -> int:
    """How many Parquet row groups a dataset folder holds (Petastorm shards by these)."""
    return sum(fragment.metadata.num_row_groups for fragment in _fragments(location))


def _fragments(location: str) -> list:
    """The Parquet files of a folder (names starting with _ or . are skipped, as Spark does)."""
    import pyarrow.dataset as ds

    fs, root = filesystem_for(location)
    return list(ds.dataset(root, filesystem=fs, format="parquet").get_fragments())


def read_split(location: str, columns: Sequence[str] = (*TRAIN_COLUMNS, *EVAL_EXTRA),
               rank: int = 0, world: int = 1, last: int = 0) -> dict[str, np.ndarray]:
    """Every row of a split (or of this rank's share of its row groups), as numpy arrays.

    Row groups are dealt to ranks round-robin in a fixed order, so each row is read by
    exactly one rank (evaluation must see every row exactly once, unlike training).
    Array columns become 2-D arrays, of their last `last` positions only when `last` > 0
    (the histories' most recent entries: they are right-aligned).
    """
    return _to_numpy(_row_groups_of_rank(location, columns, rank, world, last), columns)


def iter_split(location: str, columns: Sequence[str], rank: int = 0, world: int = 1, last: int = 0
               ) -> Iterator[dict[str, np.ndarray]]:
    """The rows of `read_split`, in the same order, one row group at a time: a reader
    holds one row group, whatever the size of the split."""
    for table in _row_groups_of_rank(location, columns, rank, world, last):
        yield _to_numpy([table], columns)


def _row_groups_of_rank(location: str, columns: Sequence[str], rank: int, world: int, last: int = 0) -> Iterator:
    """This rank's row groups (every `world`-th, in the order of the sorted file names) as
    Arrow tables of the stored columns behind `columns` (see `stored_columns` for `last`)."""
    index = 0
    fragments = sorted(_fragments(location), key=lambda f: f.path)
    stored = stored_columns(fragments[0].physical_schema.names, columns, last) if fragments else []
    for fragment in fragments:
        for group in range(fragment.metadata.num_row_groups):
            if index % world == rank:
                yield fragment.subset(row_group_ids=[group]).to_table(columns=stored)
            index += 1


def _to_numpy(tables: Iterable, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The tables' rows as numpy arrays keyed by `columns` (wide and list columns 2-D).
    Each column is copied once into its array and its Arrow buffers are dropped right
    after, so a read holds about two copies of the data at its peak, not three."""
    import pyarrow as pa

    tables = list(tables)
    if not tables:
        return {c: np.empty(0) for c in columns}
    table = pa.concat_tables(tables)
    del tables  # `table` now holds the only reference to the row groups' buffers
    out = {}
    for name in columns:
        stored = stored_columns(table.column_names, [name])
        if stored == [name]:
            out[name] = _column_to_numpy(table.column(name))
        else:
            out[name] = _stacked(table, stored)
        table = table.drop_columns(stored)
    return out


def _column_to_numpy(column) -> np.ndarray:
    """One Arrow column as a numpy array; a list column as (rows, width)."""
    import pyarrow as pa

    column = column.combine_chunks()
    if isinstance(column.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        width = len(column[0]) if len(column) else 0
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
    return column.to_numpy(zero_copy_only=False)


def _stacked(table, stored: Sequence[str]) -> np.ndarray:
    """Wide columns of a table as one (rows, positions) array, filled a column at a time."""
    first = _column_to_numpy(table.column(stored[0]))
    out = np.empty((len(first), len(stored)), first.dtype)
    out[:, 0] = first
    for j, name in enumerate(stored[1:], start=1):
        out[:, j] = _column_to_numpy(table.column(name))
    return out


def schema_columns(location: str) -> list[str]:
    """The column names of a split's Parquet files (from the first file's footer)."""
    fragments = _fragments(location)
    return list(fragments[0].physical_schema.names) if fragments else []


def parquet_rows(location: str) -> int:
    """Rows of a Parquet folder from the footers alone."""
    return sum(frag.metadata.num_rows for frag in _fragments(location))
