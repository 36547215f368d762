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
from typing import Mapping, Sequence

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


def stored_columns(available: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The stored columns that hold `columns`: the column itself, else its wide columns in
    position order; KeyError naming a column that is neither."""
    out = []
    for name in columns:
        if name in available:
            out.append(name)
            continue
        wide = sorted(c for c in available if c.startswith(name + "__") and c[len(name) + 2:].isdigit())
        if not wide:
            raise KeyError(f"column {name!r} is not in the split (has {sorted(available)[:12]}...)")
        out += sorted(wide, key=lambda c: int(c[len(name) + 2:]))
    return out


def stack_wide(arrays: Mapping[str, np.ndarray], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """`columns` from arrays keyed by stored column: wide columns stacked to (rows, width)."""
    out = {}
    for name in columns:
        if name in arrays:
            out[name] = arrays[name]
        else:
            out[name] = np.stack([arrays[c] for c in stored_columns(list(arrays), [name])], axis=1)
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
               rank: int = 0, world: int = 1) -> dict[str, np.ndarray]:
    """Every row of a split (or of this rank's share of its row groups), as numpy arrays.

    Row groups are dealt to ranks round-robin in a fixed order, so each row is read by
    exactly one rank (evaluation must see every row exactly once, unlike training).
    Array columns become 2-D arrays.
    """
    tables = []
    index = 0
    fragments = sorted(_fragments(location), key=lambda f: f.path)
    stored = stored_columns(fragments[0].physical_schema.names, columns) if fragments else []
    for fragment in fragments:
        for group in range(fragment.metadata.num_row_groups):
            if index % world == rank:
                tables.append(fragment.subset(row_group_ids=[group]).to_table(columns=stored))
            index += 1
    return _to_numpy(tables, columns)


def _to_numpy(tables: list, columns: Sequence[str]) -> dict[str, np.ndarray]:
    import pyarrow as pa

    if not tables:
        return {c: np.empty(0) for c in columns}
    table = pa.concat_tables(tables)
    out = {}
    for name in stored_columns(table.column_names, columns):
        column = table.column(name).combine_chunks()
        if isinstance(column.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
            width = len(column[0]) if len(column) else 0
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return stack_wide(out, columns)


def schema_columns(location: str) -> list[str]:
    """The column names of a split's Parquet files (from the first file's footer)."""
    fragments = _fragments(location)
    return list(fragments[0].physical_schema.names) if fragments else []


def parquet_rows(location: str) -> int:
    """Rows of a Parquet folder from the footers alone."""
    return sum(frag.metadata.num_rows for frag in _fragments(location))
