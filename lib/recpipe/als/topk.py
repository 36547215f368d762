"""Exact top-K items per user without recommendForAllUsers' cross join and global shuffle.

The item factors are broadcast once; each partition of users is scored with a matrix
product against one block of items at a time and the running best K is kept with an
arg-partition, so memory per task is bounded by (users in a batch) × (block size).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.schema import ALS_SCORE, ITEM_IDX, USER_IDX

RANK = "rank"
CANDIDATES_SCHEMA = T.StructType(
    [
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(ALS_SCORE, T.FloatType(), False),
        T.StructField(RANK, T.IntegerType(), False),
    ]
)


def top_k_block(
    user_vectors: np.ndarray, item_ids: np.ndarray, item_vectors: np.ndarray, seen: list, k: int, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best k items per user, best first; ties broken by the smaller item id.

    Args:
        user_vectors: (U, R) float32.
        item_ids: (I,) item ids sorted ascending; item_vectors (I, R) in the same order.
        seen: per user, an array of item ids to exclude (or None).
        k: items to keep per user; fewer come back when fewer items are left.
        block_size: items scored per matrix product.

    Returns:
        (ids, scores), each (U, k'), with -inf scores marking empty slots.
    """
    n_users = user_vectors.shape[0]
    best_scores = np.full((n_users, 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((n_users, 0), dtype=np.int64)
    excluded_rows, excluded_cols = excluded_positions(seen, item_ids)
    for start in range(0, len(item_ids), block_size):
        stop = min(start + block_size, len(item_ids))
        scores = user_vectors @ item_vectors[start:stop].T  # (U, block)
        in_block = (excluded_cols >= start) & (excluded_cols < stop)
        scores[excluded_rows[in_block], excluded_cols[in_block] - start] = -np.inf
        block_ids = np.broadcast_to(item_ids[start:stop], scores.shape)
        best_scores, best_ids = keep_best(
            np.concatenate([best_scores, scores], axis=1), np.concatenate([best_ids, block_ids], axis=1), k
        )
    return best_ids, best_scores


def excluded_positions(seen: list, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions of each user's seen items in the sorted item id array."""
    lengths = np.array([0 if s is None else len(s) for s in seen], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seen if s is not None and len(s)])
    rows = np.repeat(np.arange(len(seen)), lengths)
    cols = np.searchsorted(item_ids, flat)
    known = (cols < len(item_ids)) & (item_ids[np.minimum(cols, len(item_ids) - 1)] == flat)
    return rows[known], cols[known]


def keep_best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row, sorted by score descending then id ascending."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def top_k_candidates(
    user_factors: DataFrame, item_factors: DataFrame, seen: DataFrame | None, k: int, block_size: int
) -> DataFrame:
    """Top-k (user_idx, item_idx, als_score, rank) for every user with a factor.

    Args:
        user_factors, item_factors: ALSModel.userFactors / itemFactors (id, features).
        seen: (user_idx, seen array) of items to exclude, or None to keep everything.
    """
    items = item_factors.orderBy("id").toPandas()  # the item side is small enough to broadcast by design
    item_ids = items["id"].to_numpy(dtype=np.int64)
    item_vectors = np.stack(items["features"].to_numpy()).astype(np.float32) if len(items) else np.zeros((0, 0), np.float32)
    broadcast = user_factors.sparkSession.sparkContext.broadcast((item_ids, item_vectors))

    users = user_factors.select(F.col("id").alias(USER_IDX), "features")
    if seen is not None:
        users = users.join(seen, USER_IDX, "left")
    else:
        users = users.withColumn("seen", F.lit(None).cast("array<int>"))

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids, vectors = broadcast.value
        for batch in batches:
            if batch.empty:
                continue
            user_vectors = np.stack(batch["features"].to_numpy()).astype(np.float32)
            best_ids, best_scores = top_k_block(user_vectors, ids, vectors, list(batch["seen"]), k, block_size)
            yield candidates_frame(batch[USER_IDX].to_numpy(), best_ids, best_scores)

    return users.mapInPandas(score_partition, CANDIDATES_SCHEMA)


def candidates_frame(user_ids: np.ndarray, best_ids: np.ndarray, best_scores: np.ndarray) -> pd.DataFrame:
    """Long format, one row per (user, candidate); empty (-inf) slots dropped."""
    n_users, width = best_ids.shape
    valid = np.isfinite(best_scores)
    return pd.DataFrame(
        {
            USER_IDX: np.repeat(user_ids, width)[valid.ravel()].astype(np.int32),
            ITEM_IDX: best_ids.ravel()[valid.ravel()].astype(np.int32),
            ALS_SCORE: best_scores.ravel()[valid.ravel()].astype(np.float32),
            RANK: np.tile(np.arange(1, width + 1, dtype=np.int32), n_users)[valid.ravel()],
        }
    )
