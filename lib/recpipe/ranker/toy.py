"""A small synthetic `ranker_input` split written with pyarrow, for tests and benchmarks.

It has the columns and types of the real table, row groups of chosen sizes, and a
planted signal: a click is likelier when the candidate's category matches one of the
user's three most recent history items (what target attention can find), and less likely
the lower its feed position.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.serving.model import RankerModelConfig
from recpipe.splits import wide_name


def toy_arrays(rows: int, *, history_length: int = 8, items: int = 200, categories: int = 10, brands: int = 20,
               user_dense: int = 3, item_dense: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of `rows` toy samples (item k has category 1 + k % categories and brand
    1 + (k // categories) % brands)."""
    rng = np.random.default_rng(seed)
    cat_of = lambda ids: np.where(ids > 0, 1 + ids % categories, 0).astype(np.int32)  # noqa: E731
    brand_of = lambda ids: np.where(ids > 0, 1 + (ids // categories) % brands, 0).astype(np.int32)  # noqa: E731
    hist_len = rng.integers(0, history_length + 1, rows).astype(np.int32)
    hist_items = rng.integers(1, items, (rows, history_length)).astype(np.int32)
    hist_items[np.arange(history_length)[None, :] < (history_length - hist_len)[:, None]] = 0  # left padding
    item_idx = rng.integers(1, items, rows).astype(np.int32)
    recent = cat_of(hist_items[:, -3:])
    match = (recent == cat_of(item_idx)[:, None]).any(axis=1)
    position = rng.integers(0, 8, rows).astype(np.int32)
    p = 1.0 / (1.0 + np.exp(-(-2.0 + 3.0 * match - 0.2 * position)))
    return {
        "event_id": np.array([f"e{seed}-{i}" for i in range(rows)]),
        "user_idx": rng.integers(1, max(rows // 4, 2), rows).astype(np.int32),
        "item_idx": item_idx,
        "cat_idx": cat_of(item_idx),
        "brand_idx": brand_of(item_idx),
        "position": position,
        "label": (rng.random(rows) < p).astype(np.float32),
        "hist_items": hist_items,
        "hist_cats": cat_of(hist_items),
        "hist_brands": brand_of(hist_items),
        "hist_len": hist_len,
        "user_dense": rng.normal(2.0, 3.0, (rows, user_dense)).astype(np.float32),
        "item_dense": rng.normal(-1.0, 0.5, (rows, item_dense)).astype(np.float32),
        "als_score": rng.normal(0.0, 1.0, rows).astype(np.float32),
        "ts_ms": np.arange(rows, dtype=np.int64),
    }


def to_table(arrays: dict[str, np.ndarray], wide: bool = True) -> pa.Table:
    """The arrays as a table: 2-D arrays as one column per position (`ranker_input`'s wide
    layout, `splits.wide_name`), or as list columns (the older layout) when not `wide`."""
    columns = {}
    for name, values in arrays.items():
        if values.ndim == 2 and wide:
            columns.update({wide_name(name, j): pa.array(values[:, j]) for j in range(values.shape[1])})
        elif values.ndim == 2:
            columns[name] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)), pa.array(values.ravel()))
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def write_toy_split(folder: str, row_group_sizes: Sequence[int], *, files: int = 1, seed: int = 0,
                    wide: bool = True, **shape) -> int:
    """Write a split of toy rows as `files` Parquet files whose row groups have the given
    sizes (dealt to the files in turn); returns the number of rows.

    `shape` goes to `toy_arrays` (history_length, items, categories, user_dense, item_dense).
    """
    os.makedirs(folder, exist_ok=True)
    table = to_table(toy_arrays(sum(row_group_sizes), seed=seed, **shape), wide)
    writers = [pq.ParquetWriter(os.path.join(folder, f"part-{i:05d}.parquet"), table.schema) for i in range(files)]
    start = 0
    for i, size in enumerate(row_group_sizes):
        writers[i % files].write_table(table.slice(start, size), row_group_size=size)
        start += size
    for writer in writers:
        writer.close()
    return start


def toy_model_config(settings: Mapping[str, Any]) -> RankerModelConfig:
    """A small ranker for toy_arrays' default shape (categories + 1 for the padding index),
    with a config's network `settings` (`recpipe.ranker.settings.network_settings`)."""
    return RankerModelConfig(**{**settings, "item_vocab": 200, "cat_vocab": 11, "brand_vocab": 21, "history_length": 8,
                                "user_dense_dim": 3, "item_dense_dim": 2, "pooling": "attention",
                                "item_embedding_dim": 8, "cat_embedding_dim": 4, "attention_hidden": (16,),
                                "head_hidden": (16,)})
