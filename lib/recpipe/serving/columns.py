"""The consumer's input columns and how a column of feature lists becomes an array.
Without PyTorch, so that the pipeline's driver can name them without loading the network.
Part of the model's code: nothing from recpipe outside the serving package."""

from __future__ import annotations

import numpy as np
import pandas as pd

ITEM_ID, HISTORY, USER_ID = "item_id", "history", "user_id"
USER_DENSE, ITEM_DENSE, ALS_SCORE = "user_dense", "item_dense", "als_score"
REQUIRED_COLUMNS = (ITEM_ID, HISTORY)


def dense_column(candidates: pd.DataFrame, column: str, rows: int, dim: int) -> np.ndarray:
    """(rows, dim) float32 from a column of lists; absent, null or of another length = NaN
    (the training mean)."""
    out = np.full((rows, dim), np.nan, np.float32)
    if column not in candidates.columns or not rows:
        return out
    values = candidates[column].tolist()
    whole = np.fromiter((v is not None and not isinstance(v, float) and len(v) == dim for v in values), bool, rows)
    if whole.any() and dim:
        out[whole] = np.array([values[i] for i in np.flatnonzero(whole)], dtype=np.float32).reshape(-1, dim)
    return out
