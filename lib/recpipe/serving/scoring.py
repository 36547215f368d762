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

from .columns import ALS_SCORE, HISTORY, ITEM_DENSE, ITEM_ID, REQUIRED_COLUMNS, USER_DENSE, USER_ID, dense_column
from .model import INPUTS, SHARED_INPUTS, UNKNOWN_POSITION, RankerModel, build_model

__all__ = ["ALS_SCORE", "HISTORY", "ITEM_DENSE", "ITEM_ID", "REQUIRED_COLUMNS", "USER_DENSE", "USER_ID",
           "CandidateScorer", "dense_column", "save_vocabulary", "save_weights"]


def save_vocabulary(location: str, item_ids: np.ndarray, item_idx: np.ndarray, cat_idx: np.ndarray,
                    item_dense: np.ndarray, brand_idx: np.ndarray | None = None) -> None:
    """Write the id dictionaries (item_id → item_idx, item_idx → cat_idx and brand_idx) and
    the item feature snapshot as one .npz of plain arrays (no pickled objects)."""
    np.savez_compressed(
        location,
        item_ids=np.asarray(item_ids, dtype=np.str_),
        item_idx=np.asarray(item_idx, dtype=np.int64),
        cat_idx=np.asarray(cat_idx, dtype=np.int64),
        brand_idx=np.asarray(brand_idx if brand_idx is not None else np.zeros(len(item_idx)), dtype=np.int64),
        item_dense=np.asarray(item_dense, dtype=np.float32),
    )


def save_weights(location: str, model_config: Mapping[str, Any], model_state: Mapping[str, torch.Tensor]) -> None:
    torch.save({"model_config": dict(model_config), "model_state": dict(model_state)}, location)


class CandidateScorer:
    """Click probabilities for candidates named by string ids (`score`) or by the lake's
    dense item indexes (`score_indexes`, the pipeline's batch scorer); both go through the
    same id mapping and the same network, so they give the same scores for the same rows.

    Args:
        model: the trained network.
        item_ids / item_idx / cat_idx / brand_idx: the item dictionary and each item's
            category and brand (None: no brands, a vocabulary of an earlier version).
        item_dense: (items, I) feature snapshot per dictionary row; NaN rows = unknown.
    """

    def __init__(self, model: RankerModel, item_ids: np.ndarray, item_idx: np.ndarray, cat_idx: np.ndarray,
                 item_dense: np.ndarray, batch_size: int = 4096, brand_idx: np.ndarray | None = None):
        self.model = model.eval()
        self.config = model.config
        self.index = pd.Index(np.asarray(item_ids).astype(str))
        item_idx, cat_idx = np.asarray(item_idx, np.int64), np.asarray(cat_idx, np.int64)
        # Dictionary row of each lake index (-1: not in the dictionary the model was built with).
        self.row_of_index = np.full(int(item_idx.max(initial=0)) + 1, -1, np.int64)
        self.row_of_index[item_idx] = np.arange(len(item_idx))
        # Indexes the network never saw in training are unknown (0), like ids not in the dictionary.
        known = (item_idx > 0) & (item_idx < self.config.item_vocab)
        self.item_idx = np.where(known, item_idx, 0).astype(np.int64)
        self.cat_idx = np.where((cat_idx > 0) & (cat_idx < self.config.cat_vocab), cat_idx, 0).astype(np.int64)
        brand_idx = np.zeros_like(item_idx) if brand_idx is None else np.asarray(brand_idx, np.int64)
        self.brand_idx = np.where((brand_idx > 0) & (brand_idx < self.config.brand_vocab), brand_idx, 0)
        self.item_dense = np.asarray(item_dense, dtype=np.float32)
        self.batch_size = batch_size

    @classmethod
    def from_files(cls, weights: str, vocabulary: str) -> "CandidateScorer":
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        model = build_model(saved["model_config"])
        model.load_state_dict(saved["model_state"])
        with np.load(vocabulary, allow_pickle=False) as v:
            brands = v["brand_idx"] if "brand_idx" in v.files else None
            return cls(model, v["item_ids"], v["item_idx"], v["cat_idx"], v["item_dense"], brand_idx=brands)

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """Click probabilities, one per row of `candidates` (float64, in row order)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
        if missing:
            raise ValueError(f"candidates lack column(s) {missing}; has {list(candidates.columns)}")
        return self.forward(self.inputs(candidates))

    def score_indexes(self, item_idx: np.ndarray, hist_items: np.ndarray, hist_lengths: np.ndarray,
                      user_dense: np.ndarray, item_dense: np.ndarray, als_score: np.ndarray,
                      repeat: np.ndarray | None = None) -> np.ndarray:
        """`score` for rows given by the lake's indexes instead of string ids.

        Args:
            item_idx: (B,) the candidates' item indexes.
            hist_items / hist_lengths: every history's indexes, concatenated, most recent
                last within a history, and each one's count (0 = none); 0 entries are padding.
            user_dense: (H, U) float features of each history's user, NaN = unknown.
            item_dense: (B, I) float features of the candidates, NaN = unknown.
            als_score: (B,) float, NaN = 0.
            repeat: (H,) candidates per history: history h (and its user_dense row) belongs
                to the next repeat[h] candidates, so a user's history is mapped, embedded
                and attended to once for all of their candidates (the network's `owner`).
                None: one history per candidate (H = B).
        """
        inputs = self.lake_inputs(item_idx, hist_items, hist_lengths, user_dense, item_dense, als_score)
        owner = None if repeat is None else np.repeat(np.arange(len(repeat)), repeat)
        return self.forward(inputs, owner)

    def lake_inputs(self, item_idx: np.ndarray, hist_items: np.ndarray, hist_lengths: np.ndarray,
                    user_dense: np.ndarray, item_dense: np.ndarray, als_score: np.ndarray,
                    repeat: np.ndarray | None = None) -> list[torch.Tensor]:
        """The forward arguments for `score_indexes`' arguments: the history inputs one row
        per history, or with `repeat` one per candidate (each history repeated), the
        network's plain per-row inputs."""
        hist_items = np.asarray(hist_items, np.int64)
        real = hist_items > 0
        owner = np.repeat(np.arange(len(hist_lengths)), hist_lengths)[real]
        histories = self._histories(self.rows_of(hist_items[real]), np.bincount(owner, minlength=len(hist_lengths)))
        user_dense = np.asarray(user_dense, np.float32)
        if repeat is not None:
            histories = tuple(np.repeat(h, repeat, axis=0) for h in histories)
            user_dense = np.repeat(user_dense, repeat, axis=0)
        return self.index_inputs(self.rows_of(item_idx), histories, user_dense, item_dense,
                                 np.nan_to_num(np.asarray(als_score, np.float32)))

    def forward(self, inputs: list[torch.Tensor], owner: np.ndarray | None = None) -> np.ndarray:
        """Click probabilities in batches of `batch_size` candidates. With `owner` (B,),
        non-decreasing, the history inputs hold one row per history (see `score_indexes`);
        each batch takes the histories its candidates belong to."""
        out = []
        with torch.no_grad():
            for start in range(0, len(inputs[0]), self.batch_size):
                stop = start + self.batch_size
                if owner is None:
                    batch, shared = [t[start:stop] for t in inputs], {}
                else:
                    part = owner[start:stop]
                    first, last = int(part[0]), int(part[-1]) + 1
                    batch = [t[first:last] if name in SHARED_INPUTS else t[start:stop]
                             for name, t in zip(INPUTS, inputs)]
                    shared = {"owner": torch.as_tensor(part - first)}
                out.append(torch.sigmoid(self.model(*batch, **shared).float()).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)

    def rows_of(self, lake_idx: np.ndarray) -> np.ndarray:
        """Dictionary rows of lake item indexes (-1 where the dictionary lacks one)."""
        lake_idx = np.asarray(lake_idx, np.int64)
        inside = (lake_idx >= 0) & (lake_idx < len(self.row_of_index))
        return np.where(inside, self.row_of_index[np.where(inside, lake_idx, 0)], -1)

    def inputs(self, candidates: pd.DataFrame) -> list[torch.Tensor]:
        """The network's forward arguments for a DataFrame of candidates (string ids)."""
        rows = len(candidates)
        codes = self.index.get_indexer(candidates[ITEM_ID].astype(str))  # -1 = not in the dictionary
        history_codes, history_lengths = self._history_codes(candidates[HISTORY])
        user_dense = dense_column(candidates, USER_DENSE, rows, self.config.user_dense_dim)
        item_dense = (dense_column(candidates, ITEM_DENSE, rows, self.config.item_dense_dim)
                      if ITEM_DENSE in candidates.columns else None)
        als = (candidates[ALS_SCORE].astype(float).fillna(0.0).to_numpy(np.float32)
               if ALS_SCORE in candidates.columns else np.zeros(rows, np.float32))
        return self.index_inputs(codes, self._histories(history_codes, history_lengths), user_dense, item_dense, als)

    def index_inputs(self, codes: np.ndarray, histories: tuple[np.ndarray, ...],
                     user_dense: np.ndarray, item_dense: np.ndarray | None, als: np.ndarray) -> list[torch.Tensor]:
        """The forward arguments from the candidates' dictionary rows (`codes`, -1 = unknown)
        and their histories (`_histories`). `item_dense` None takes the packaged snapshot.
        The position is the unknown one for every row: a constant, so the ranking is the
        network's alone and the consumer never supplies it."""
        item_idx = np.where(codes >= 0, self.item_idx[codes], 0)
        cat_idx = np.where(codes >= 0, self.cat_idx[codes], 0)
        brand_idx = np.where(codes >= 0, self.brand_idx[codes], 0)
        hist_items, hist_cats, hist_brands, hist_len = histories
        if item_dense is None:
            item_dense = (np.where(codes[:, None] >= 0, self.item_dense[codes], np.nan).astype(np.float32)
                          if self.item_dense.size else np.full((len(codes), self.config.item_dense_dim), np.nan,
                                                               np.float32))
        return [torch.as_tensor(np.ascontiguousarray(x)) for x in
                (item_idx, cat_idx, brand_idx, hist_items, hist_cats, hist_brands, hist_len,
                 np.asarray(user_dense, np.float32), np.asarray(item_dense, np.float32), np.asarray(als, np.float32),
                 np.full(len(codes), UNKNOWN_POSITION, np.int64))]

    def _history_codes(self, histories: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Every history's ids as dictionary rows, concatenated, and each row's length."""
        lists = [h if isinstance(h, (list, tuple, np.ndarray)) else () for h in histories]
        lengths = np.fromiter((len(h) for h in lists), np.int64, len(lists))
        if not lengths.sum():
            return np.empty(0, np.int64), lengths
        flat = np.concatenate([np.asarray(h, dtype=object) for h in lists if len(h)]).astype(str)
        return self.index.get_indexer(flat), lengths

    def _histories(self, codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        """Left-padded (rows, L) item, category and brand indexes and the real lengths.

        History ids missing from the dictionary (or known by neither item nor category)
        carry no information and are dropped; then the last L are kept, most recent last.
        An item added after training keeps its category and brand (its item index is 0).
        """
        length = self.config.history_length
        rows = len(lengths)
        flat_items = np.where(codes >= 0, self.item_idx[codes], 0)
        flat_cats = np.where(codes >= 0, self.cat_idx[codes], 0)
        flat_brands = np.where(codes >= 0, self.brand_idx[codes], 0)
        row = np.repeat(np.arange(rows), lengths)
        keep = (codes >= 0) & ((flat_items > 0) | (flat_cats > 0) | (flat_brands > 0))
        row, items, cats, brands = row[keep], flat_items[keep], flat_cats[keep], flat_brands[keep]
        kept = np.bincount(row, minlength=rows)
        # Position of each kept entry counted from the end of its row (0 = most recent).
        starts = np.cumsum(kept) - kept
        from_end = kept[row] - 1 - (np.arange(len(row)) - starts[row])
        recent = from_end < length
        slot = length - 1 - from_end[recent]
        out = []
        for values in (items, cats, brands):
            padded = np.zeros((rows, length), np.int64)
            padded[row[recent], slot] = values[recent]
            out.append(padded)
        return (*out, np.minimum(kept, length))


def model_info(weights: str) -> dict[str, Any]:
    """The model config saved with the weights (for display)."""
    return json.loads(json.dumps(torch.load(weights, map_location="cpu", weights_only=True)["model_config"]))
