"""The fitted oracle: the generator's own click model with learned item vectors.

The true oracle (the planted p_click) knows the hidden item vectors; no learner does. The
fitted oracle knows the functional form of the truth (`recpipe.generate.clicks`) and
nothing else:

    logit = b + w * max_j cos(v_candidate, v_j) + b_candidate - d * position

over the last `history_window` entries of the history, with every item vector v, the
per-item bias b_i (standing in for popularity), w, d and b fitted by maximum likelihood
on the train rows, with early stopping on the valid rows. An item's vector is built the
way the generator builds it, from what the data shows of it: a learned vector of its
category plus one of its brand plus its own residual. A user without history gets a
learned constant in place of the similarity (the truth uses interest centres no learner
sees). This is about the best any learner can do with these rows: how far a ranker is
from it says what is left to learn, while the distance from the fitted oracle to the
true one is what the data cannot teach.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from recpipe.config import FittedOracleConfig
from recpipe.metrics import auc

log = logging.getLogger("recpipe.ranker")

COLUMNS = ("item_idx", "cat_idx", "brand_idx", "hist_items", "hist_cats", "hist_brands", "hist_len", "position",
           "label")
UNBOUNDED = (2**31 - 1,) * 3  # vocabulary sizes that keep every id: the train rows define the vocabularies


class ClickForm(nn.Module):
    """The truth's functional form with learned parameters (see the module docstring)."""

    def __init__(self, items: int, categories: int, brands: int, dim: int):
        super().__init__()
        self.vectors = nn.Embedding(items, dim)  # the item's own residual
        self.category_vectors = nn.Embedding(categories, dim)
        self.brand_vectors = nn.Embedding(brands, dim)
        with torch.no_grad():
            self.vectors.weight.mul_(0.5)
        self.item_bias = nn.Embedding(items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.bias = nn.Parameter(torch.tensor(-3.0))
        self.similarity_weight = nn.Parameter(torch.tensor(1.0))
        self.position_decay = nn.Parameter(torch.tensor(0.0))
        self.empty_similarity = nn.Parameter(torch.tensor(0.0))

    def vector(self, items: torch.Tensor, cats: torch.Tensor, brands: torch.Tensor) -> torch.Tensor:
        """Unit vectors: category + brand + residual, as the generator composes them."""
        return nn.functional.normalize(
            self.category_vectors(cats) + self.brand_vectors(brands) + self.vectors(items), dim=-1)

    def forward(self, item: torch.Tensor, cat: torch.Tensor, brand: torch.Tensor, history: torch.Tensor,
                history_cats: torch.Tensor, history_brands: torch.Tensor, real: torch.Tensor,
                position: torch.Tensor) -> torch.Tensor:
        candidate = self.vector(item, cat, brand)  # (B, D)
        past = self.vector(history, history_cats, history_brands)  # (B, H, D)
        cos = torch.einsum("bd,bhd->bh", candidate, past).masked_fill(~real, -2.0)
        nearest = cos.max(dim=1).values
        similarity = torch.where(real.any(dim=1), nearest, self.empty_similarity)
        slot = position.clamp_min(0).float()  # an unlogged position (-1) counts as the first slot
        return (self.bias + self.similarity_weight * similarity + self.item_bias(item).squeeze(-1)
                - self.position_decay * slot)


def vocabularies(inputs: list[torch.Tensor]) -> tuple[int, int, int]:
    """1 + the largest item, category and brand index of the train rows' inputs (the
    candidate's and the history's, see `window_inputs`)."""
    def top(*ids: torch.Tensor) -> int:
        return 1 + max((int(t.max()) for t in ids if t.numel()), default=0)

    return top(inputs[0], inputs[3]), top(inputs[1], inputs[4]), top(inputs[2], inputs[5])


def window_inputs(arrays: Mapping[str, np.ndarray], window: int, sizes: tuple[int, int, int]) -> list[torch.Tensor]:
    """Candidate (item, category, brand), the last `window` history entries (the same
    three) with their mask, and position, as tensors; ids outside the train vocabularies
    are 0 (an item unseen in training keeps its category and brand)."""
    def inside(name: str, size: int, last: bool = False) -> np.ndarray:
        ids = np.asarray(arrays[name]).astype(np.int32)  # embeddings take int32 ids: half the memory of int64
        ids = ids[:, -window:] if last else ids
        return np.where((ids > 0) & (ids < size), ids, 0)

    items, cats, brands = sizes
    hist = inside("hist_items", items, last=True)
    length = np.minimum(np.asarray(arrays["hist_len"]), hist.shape[1])
    real = np.arange(hist.shape[1])[None, :] >= (hist.shape[1] - length)[:, None]
    position = arrays["position"] if "position" in arrays else np.full(len(hist), -1)
    return [torch.as_tensor(x) for x in (
        inside("item_idx", items), inside("cat_idx", cats), inside("brand_idx", brands),
        hist, inside("hist_cats", cats, last=True), inside("hist_brands", brands, last=True), real,
        np.asarray(position, np.int32))]


@torch.no_grad()
def predict(model: ClickForm, inputs: list[torch.Tensor], batch_size: int = 65536) -> np.ndarray:
    model.eval()
    rows = len(inputs[0])
    out = [torch.sigmoid(model(*[t[s:s + batch_size] for t in inputs])).numpy() for s in range(0, rows, batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


class Rows(NamedTuple):
    """A split's rows as the click form takes them: `window_inputs` and the labels."""
    inputs: list[torch.Tensor]
    labels: np.ndarray


def rows_of(arrays: Mapping[str, np.ndarray], window: int, sizes: tuple[int, int, int]) -> Rows:
    """Rows in memory as `Rows` (ids outside `sizes` become 0, see `window_inputs`)."""
    return Rows(window_inputs(arrays, window, sizes), np.asarray(arrays["label"], np.float32))


def rows_of_split(location: str, window: int, sizes: tuple[int, int, int] = UNBOUNDED) -> Rows:
    """`rows_of` a whole split, read and converted one row group at a time into tensors of
    the split's size: the driver holds the split once, as tensors, not also as it was read
    (at 7.4 M train rows a second 1.1 GB). Only the last `window` history positions are
    read, a fifth of the stored width."""
    from recpipe.splits import iter_split, parquet_rows, read_split

    total, start, rows = parquet_rows(location), 0, None
    for piece in iter_split(location, COLUMNS, last=window):
        part = rows_of(piece, window, sizes)
        if rows is None:
            rows = Rows([torch.empty((total, *t.shape[1:]), dtype=t.dtype) for t in part.inputs],
                        np.empty(total, np.float32))
        end = start + len(part.labels)
        for whole, tensor in zip(rows.inputs, part.inputs):
            whole[start:end] = tensor
        rows.labels[start:end] = part.labels
        start = end
    return rows if rows is not None else rows_of(read_split(location, COLUMNS, last=window), window, sizes)


def fit(train: Rows, valid: Rows, sizes: tuple[int, int, int], settings: FittedOracleConfig
        ) -> tuple[ClickForm, dict[str, float]]:
    """Fit the click form on `train`, keeping the epoch with the best valid AUC; `sizes`
    are the train rows' `vocabularies` (valid ids outside them must already be 0).

    Returns:
        The fitted model and `epochs` (trained), `best_epoch`, `valid_auc` (of the best).
    """
    torch.manual_seed(settings.seed)
    model = ClickForm(*sizes, settings.dim)
    optimizer = torch.optim.Adam([
        {"params": [p for n, p in model.named_parameters() if n != "item_bias.weight"], "weight_decay": 0.0},
        {"params": [model.item_bias.weight], "weight_decay": settings.bias_decay},
    ], lr=settings.learning_rate)
    labels = torch.from_numpy(train.labels)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(settings.seed)
    best = (-math.inf, 0, None)
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            loss = loss_fn(model(*[t[rows] for t in train.inputs]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = auc(valid.labels, predict(model, valid.inputs))
        if score > best[0]:
            best = (score, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= settings.patience:
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    log.info("fitted oracle: %d epochs, best %d (valid AUC %.4f)", epoch, best[1], best[0])
    return model, {"epochs": float(epoch), "best_epoch": float(best[1]), "valid_auc": float(best[0])}


def fitted_oracle_scores(train: Mapping[str, np.ndarray] | str, valid: Mapping[str, np.ndarray] | str,
                         test: Mapping[str, np.ndarray], settings: FittedOracleConfig) -> np.ndarray:
    """The fitted oracle's click probabilities for the test rows. `train` and `valid` are
    rows in memory or split folders, read a row group at a time (`rows_of_split`)."""
    window = settings.history_window

    def rows(split: Mapping[str, np.ndarray] | str, sizes: tuple[int, int, int]) -> Rows:
        return rows_of_split(split, window, sizes) if isinstance(split, str) else rows_of(split, window, sizes)

    train_rows = rows(train, UNBOUNDED)
    sizes = vocabularies(train_rows.inputs)
    model, _ = fit(train_rows, rows(valid, sizes), sizes, settings)
    return predict(model, window_inputs(test, window, sizes))
