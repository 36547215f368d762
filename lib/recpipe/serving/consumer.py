"""Rows of `ranker_input` (dense indexes) in the form a consumer sends to the registered
model: string item ids, the history as a list of item ids (most recent last), dense
features as lists. Used for the model's input example and by the promotion gate, which
must score champion and challenger exactly as consumers do."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from recpipe.serving.columns import ALS_SCORE, HISTORY, ITEM_DENSE, ITEM_ID, USER_DENSE, USER_ID

UNKNOWN = "unknown"


def id_lookup(item_idx: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """A string array `names` with names[idx] = item id (UNKNOWN where no id has that index)."""
    item_idx = np.asarray(item_idx, dtype=np.int64)
    names = np.full(int(item_idx.max(initial=0)) + 1, UNKNOWN, dtype=object)
    names[item_idx] = np.asarray(item_ids, dtype=object)
    return names


def _name(names: np.ndarray, idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    inside = (idx >= 0) & (idx < len(names))
    return np.where(inside, names[np.clip(idx, 0, len(names) - 1)], UNKNOWN)


def consumer_frame(arrays: Mapping[str, np.ndarray], names: np.ndarray, rows: Sequence[int] | None = None,
                   user_names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """The consumer's DataFrame for `rows` (default: all) of in-memory `ranker_input` arrays.

    Args:
        arrays: columns from `ranker.data.read_split` (item_idx, hist_items, hist_len,
            user_dense, item_dense, als_score, and user_idx when `user_names` is given).
        names: from `id_lookup`.
        user_names: user_idx → user_id; when given, a `user_id` column is added.
    """
    picked = np.arange(len(arrays["item_idx"])) if rows is None else np.asarray(rows, dtype=np.int64)
    hist_items = arrays["hist_items"][picked]
    hist_len = arrays["hist_len"][picked].astype(np.int64)
    width = hist_items.shape[1] if hist_items.ndim == 2 else 0
    history_names = _name(names, hist_items) if width else np.empty((len(picked), 0), dtype=object)
    # Histories are left-padded: the real items are the last hist_len positions.
    histories = [history_names[r, width - n:].tolist() if n else [] for r, n in enumerate(hist_len)]
    frame = pd.DataFrame({
        ITEM_ID: _name(names, arrays["item_idx"][picked]),
        HISTORY: histories,
        USER_DENSE: arrays["user_dense"][picked].astype(np.float64).tolist(),
        ITEM_DENSE: arrays["item_dense"][picked].astype(np.float64).tolist(),
        ALS_SCORE: arrays["als_score"][picked].astype(np.float64),
    })
    if user_names is not None:
        frame.insert(2, USER_ID, [user_names.get(int(u), UNKNOWN) for u in arrays["user_idx"][picked]])
    return frame
