"""Scoring candidates given as string ids: what the registered model does for consumers.

`CandidateScorer` turns a pandas DataFrame of candidates into model inputs with the id
dictionaries it was built with, and returns click probabilities. Part of the model's
code: relative imports only, nothing from recpipe outside the ranker package.

Input columns:
    item_id     string                the candidate
    history     list of strings       the user's item ids, most recent last (None = empty)
    user_id     string, optional      carried for the caller; the network has no user embedding
    user_dense  list of floats, optional   user features in training order (absent = the training mean)
    item_dense  list of floats, optional   item features (absent = the packaged snapshot, else the mean)
    als_score   float, optional       the ALS score of (user, item) (absent = 0)
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .model import RankerModel, build_model

ITEM_ID, HISTORY, USER_ID = "item_id", "history", "user_id"
USER_DENSE, ITEM_DENSE, ALS_SCORE = "user_dense", "item_dense", "als_score"
REQUIRED_COLUMNS = (ITEM_ID, HISTORY)


def save_vocabulary(location: str, item_ids: np.ndarray, item_idx: np.ndarray, cat_idx: np.ndarray,
                    item_dense: np.ndarray) -> None:
    """Write the id dictionaries (item_id → item_idx, item_idx → cat_idx) and the item
    feature snapshot as one .npz of plain arrays (no pickled objects)."""
    np.savez_compressed(
        location,
        item_ids=np.asarray(item_ids, dtype=np.str_),
        item_idx=np.asarray(item_idx, dtype=np.int64),
        cat_idx=np.asarray(cat_idx, dtype=np.int64),
        item_dense=np.asarray(item_dense, dtype=np.float32),
    )


def save_weights(location: str, model_config: Mapping[str, Any], model_state: Mapping[str, torch.Tensor]) -> None:
    torch.save({"model_config": dict(model_config), "model_state": dict(model_state)}, location)


class CandidateScorer:
    """Click probabilities for candidates named by string ids.

    Args:
        model: the trained network.
        item_ids / item_idx / cat_idx: the item dictionary and each item's category.
        item_dense: (items, I) feature snapshot per dictionary row; NaN rows = unknown.
    """

    def __init__(self, model: RankerModel, item_ids: np.ndarray, item_idx: np.ndarray, cat_idx: np.ndarray,
                 item_dense: np.ndarray, batch_size: int = 4096):
        self.model = model.eval()
        self.config = model.config
        self.index = pd.Index(np.asarray(item_ids).astype(str))
        # Indexes the network never saw in training are unknown (0), like ids not in the dictionary.
        known = (item_idx > 0) & (item_idx < self.config.item_vocab)
        self.item_idx = np.where(known, item_idx, 0).astype(np.int64)
        self.cat_idx = np.where((cat_idx > 0) & (cat_idx < self.config.cat_vocab), cat_idx, 0).astype(np.int64)
        self.item_dense = np.asarray(item_dense, dtype=np.float32)
        self.batch_size = batch_size

    @classmethod
    def from_files(cls, weights: str, vocabulary: str) -> "CandidateScorer":
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        model = build_model(saved["model_config"])
        model.load_state_dict(saved["model_state"])
        with np.load(vocabulary, allow_pickle=False) as v:
            return cls(model, v["item_ids"], v["item_idx"], v["cat_idx"], v["item_dense"])

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """Click probabilities, one per row of `candidates` (float64, in row order)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
        if missing:
            raise ValueError(f"candidates lack column(s) {missing}; has {list(candidates.columns)}")
        inputs = self.inputs(candidates)
        out = []
        with torch.no_grad():
            for start in range(0, len(candidates), self.batch_size):
                batch = [t[start:start + self.batch_size] for t in inputs]
                out.append(torch.sigmoid(self.model(*batch).float()).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)

    def inputs(self, candidates: pd.DataFrame) -> list[torch.Tensor]:
        """The network's forward arguments for a DataFrame of candidates."""
        rows = len(candidates)
        codes = self.index.get_indexer(candidates[ITEM_ID].astype(str))  # -1 = not in the dictionary
        item_idx = np.where(codes >= 0, self.item_idx[codes], 0)
        cat_idx = np.where(codes >= 0, self.cat_idx[codes], 0)
        hist_items, hist_cats, hist_len = self._histories(candidates[HISTORY])
        user_dense = self._dense(candidates, USER_DENSE, rows, self.config.user_dense_dim)
        item_dense = self._dense(candidates, ITEM_DENSE, rows, self.config.item_dense_dim)
        if ITEM_DENSE not in candidates.columns and self.item_dense.size:
            item_dense = np.where(codes[:, None] >= 0, self.item_dense[codes], np.nan).astype(np.float32)
        als = (candidates[ALS_SCORE].astype(float).fillna(0.0).to_numpy(np.float32)
               if ALS_SCORE in candidates.columns else np.zeros(rows, np.float32))
        return [torch.as_tensor(x) for x in (item_idx, cat_idx, hist_items, hist_cats, hist_len, user_dense,
                                             item_dense, als)]

    def _histories(self, histories: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-padded (rows, L) item and category indexes and the real lengths.

        History ids missing from the dictionary (or known by neither item nor category)
        carry no information and are dropped; then the last L are kept, most recent last.
        An item added after training keeps its category (its item index is 0).
        """
        length = self.config.history_length
        lists = [[] if h is None or (isinstance(h, float) and np.isnan(h)) else list(h) for h in histories]
        lengths = np.array([len(h) for h in lists], dtype=np.int64)
        flat = np.array([str(i) for h in lists for i in h], dtype=object)
        codes = self.index.get_indexer(flat) if len(flat) else np.empty(0, np.int64)
        flat_items = np.where(codes >= 0, self.item_idx[codes], 0)
        flat_cats = np.where(codes >= 0, self.cat_idx[codes], 0)
        row = np.repeat(np.arange(len(lists)), lengths)
        keep = (codes >= 0) & ((flat_items > 0) | (flat_cats > 0))
        row, items, cats = row[keep], flat_items[keep], flat_cats[keep]
        kept = np.bincount(row, minlength=len(lists))
        # Position of each kept entry counted from the end of its row (0 = most recent).
        starts = np.cumsum(kept) - kept
        from_end = kept[row] - 1 - (np.arange(len(row)) - starts[row])
        recent = from_end < length
        hist_items = np.zeros((len(lists), length), np.int64)
        hist_cats = np.zeros((len(lists), length), np.int64)
        hist_items[row[recent], length - 1 - from_end[recent]] = items[recent]
        hist_cats[row[recent], length - 1 - from_end[recent]] = cats[recent]
        return hist_items, hist_cats, np.minimum(kept, length)

    @staticmethod
    def _dense(candidates: pd.DataFrame, column: str, rows: int, dim: int) -> np.ndarray:
        """(rows, dim) float32 from a column of lists; absent or null = NaN (the training mean)."""
        out = np.full((rows, dim), np.nan, np.float32)
        if column in candidates.columns:
            for i, values in enumerate(candidates[column]):
                if values is not None and len(values) == dim:
                    out[i] = np.asarray(values, dtype=np.float32)
        return out


def model_info(weights: str) -> dict[str, Any]:
    """The model config saved with the weights (for display)."""
    return json.loads(json.dumps(torch.load(weights, map_location="cpu", weights_only=True)["model_config"]))
