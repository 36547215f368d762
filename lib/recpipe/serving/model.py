"""The ranker network: DIN target attention (or the mean-pooling BaseModel) over the
behaviour history, plus the candidate, normalised dense features and the ALS score.

As in DIN, an item (the candidate and every history entry) is represented by its goods,
shop (brand) and category ids: [item residual + brand, category]. The item's own row
starts near zero and is weight-decayed, so a rare item falls back to its brand and
category, which many more clicks train. Feed position enters training through a shallow
tower added to the logit (PAL); at scoring the position is unknown, a constant. For users
without clicks yet (an empty history), the share of each category among their past
impressions (part of `user_dense`) says what the feed has shown them, which follows their
interests: the head gets the share of the candidate's category and the share-weighted
category embedding crossed with the candidate's.

Everything the network needs to be rebuilt is in `RankerModelConfig` (vocabulary sizes,
widths, normalisation statistics), saved with every checkpoint and with the registered
model. This module imports nothing from recpipe outside the ranker package: the
registered pyfunc carries it as its code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from .layers import MLP, AttentionPooling, MeanPooling, masked_positions

POOLINGS = ("attention", "mean")
INPUTS = ("item_idx", "cat_idx", "brand_idx", "hist_items", "hist_cats", "hist_brands", "hist_len", "user_dense",
          "item_dense", "als_score", "position")
SHARED_INPUTS = ("hist_items", "hist_cats", "hist_brands", "hist_len", "user_dense")  # per history with `owner`
UNKNOWN_POSITION = -1  # what scoring passes: a constant, the position tower's unknown row


@dataclass(frozen=True)
class RankerModelConfig:
    """The shape of one ranker network.

    The settings of the network come from `ranker:` in the configuration (their defaults
    live in conf/base.yaml only; `recpipe.ranker.settings.network_settings`); the sizes
    and the normalisation statistics come from the data.
    `item_vocab`/`cat_vocab`/`brand_vocab` are one more than the largest index seen in
    training; larger (or negative) ids are unknown and map to index 0, the padding/unknown row.
    Normalisation statistics come from the train split; std 0 is treated as 1.
    The fields after `embedding_init_std` have defaults that build the network of earlier
    versions (no brand, no position tower, the MLP unit alone), so their checkpoints load.
    """

    item_vocab: int
    cat_vocab: int
    history_length: int
    user_dense_dim: int
    item_dense_dim: int
    pooling: str  # attention or mean
    attention_weighting: str
    item_embedding_dim: int
    cat_embedding_dim: int
    attention_hidden: tuple
    head_hidden: tuple
    activation: str
    dropout: float
    use_als_score: bool
    embedding_init_std: float  # category (and brand) embeddings start as N(0, this^2); 1.0 is torch's default
    brand_vocab: int = 0  # 0: no brand embedding
    item_init_std: float = -1.0  # the item rows' initial std; < 0: embedding_init_std
    position_buckets: int = 0  # rows of the position tower (slots 0..buckets-2, then the rest, plus unknown); 0: none
    attention_similarity: str = "none"  # cosine: a learned-temperature cos(h, c) added to the unit's score
    pooled_similarity: bool = False  # also give the head cos(pooled history, candidate)
    category_share_start: int = -1  # where the C impression shares (cat_idx 1..C) start in user_dense; -1: none
    category_share_width: int = 0  # C
    user_dense_mean: tuple = ()
    user_dense_std: tuple = ()
    item_dense_mean: tuple = ()
    item_dense_std: tuple = ()
    als_score_mean: float = 0.0
    als_score_std: float = 1.0
    extra: dict = field(default_factory=dict)  # free-form provenance (date, feature names)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RankerModelConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})


def _stats(values: tuple, dim: int, fill: float) -> torch.Tensor:
    if not values:
        return torch.full((dim,), fill)
    if len(values) != dim:
        raise ValueError(f"normalisation statistics have {len(values)} entries for {dim} features")
    return torch.tensor(values, dtype=torch.float32)


class RankerModel(nn.Module):
    """Click logit for a candidate given the user's history.

    Item, brand and category embeddings are shared by the candidate and the history; an
    item is represented by [item embedding + brand embedding, category embedding]
    (E = item + category dims).

    Forward inputs (B = batch, L = history length, U/I = dense widths):
        item_idx, cat_idx, brand_idx (B,) int; hist_items, hist_cats, hist_brands (B, L) int;
        hist_len (B,) int, user_dense (B, U) float, item_dense (B, I) float, als_score (B,) float,
        position (B,) int, the 0-based feed slot (-1 or None = unknown: scoring);
        owner (B,) int or None: when given, the history inputs and user_dense hold H rows
        and candidate b belongs to row owner[b] (a user's candidates share one history,
        embedded once); the same function as those rows repeated per candidate.

    Returns:
        logits (B,) and, from `forward_with_weights`, the history weights (B, L).
    """

    def __init__(self, config: RankerModelConfig):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; expected one of {POOLINGS}")
        self.config = config
        self.item_embedding = nn.Embedding(config.item_vocab, config.item_embedding_dim, padding_idx=0)
        self.cat_embedding = nn.Embedding(config.cat_vocab, config.cat_embedding_dim, padding_idx=0)
        self.brand_embedding = (nn.Embedding(config.brand_vocab, config.item_embedding_dim, padding_idx=0)
                                if config.brand_vocab else None)
        # Scaled in place rather than redrawn, so the random stream (and every later
        # initial weight) is the same whatever the std. A small std matters when the
        # vocabulary holds items training never shows (a temporal split, new releases):
        # their rows stay at the initial draw, and near zero they look unknown, not random.
        item_std = config.item_init_std if config.item_init_std >= 0 else config.embedding_init_std
        with torch.no_grad():
            self.item_embedding.weight.mul_(item_std)
            self.cat_embedding.weight.mul_(config.embedding_init_std)
            if self.brand_embedding is not None:
                self.brand_embedding.weight.mul_(config.embedding_init_std)
        dim = config.item_embedding_dim + config.cat_embedding_dim
        self.pooling = (
            AttentionPooling(dim, config.attention_hidden, config.attention_weighting, config.attention_similarity)
            if config.pooling == "attention" else MeanPooling()
        )
        # PAL's position tower: one learned logit offset per slot, zero at the unknown row
        # (index 0), which is what scoring uses.
        self.position_tower = (nn.Embedding(config.position_buckets, 1, padding_idx=0)
                               if config.position_buckets else None)
        if self.position_tower is not None:
            nn.init.zeros_(self.position_tower.weight)
        self.register_buffer("user_mean", _stats(config.user_dense_mean, config.user_dense_dim, 0.0))
        self.register_buffer("user_std", _stats(config.user_dense_std, config.user_dense_dim, 1.0))
        self.register_buffer("item_mean", _stats(config.item_dense_mean, config.item_dense_dim, 0.0))
        self.register_buffer("item_std", _stats(config.item_dense_std, config.item_dense_dim, 1.0))
        dense = config.user_dense_dim + config.item_dense_dim + int(config.use_als_score)
        shares = config.category_share_start >= 0
        self.share_width = min(config.category_share_width, config.cat_vocab - 1) if shares else 0
        interest = 1 + config.cat_embedding_dim if self.share_width > 0 else 0
        # pooled history, candidate, their product, dense features, their cosine, the category interest
        self.head = MLP(3 * dim + dense + int(config.pooled_similarity) + interest, config.head_hidden,
                        config.activation, config.dropout, out_dim=1)

    def known(self, ids: torch.Tensor, vocab: int) -> torch.Tensor:
        """Ids outside [0, vocab) become 0, the unknown index (never an index error)."""
        return torch.where((ids >= 0) & (ids < vocab), ids, torch.zeros_like(ids))

    def embed(self, items: torch.Tensor, cats: torch.Tensor, brands: torch.Tensor) -> torch.Tensor:
        """(...,) item, category and brand ids → (..., E)."""
        items = self.known(items.long(), self.config.item_vocab)
        cats = self.known(cats.long(), self.config.cat_vocab)
        item = self.item_embedding(items)
        if self.brand_embedding is not None:
            item = item + self.brand_embedding(self.known(brands.long(), self.config.brand_vocab))
        return torch.cat([item, self.cat_embedding(cats)], dim=-1)

    def category_interest(self, user_dense: torch.Tensor, cat_idx: torch.Tensor) -> torch.Tensor:
        """(B, 1 + cat dim): the share of the candidate's category among the user's past
        impressions, and the share-weighted category embedding times the candidate's."""
        start, width = self.config.category_share_start, self.share_width
        shares = torch.nan_to_num(user_dense[:, start:start + width].float(), nan=0.0)  # (B, W), category k at k - 1
        cats = self.known(cat_idx.long(), self.config.cat_vocab)
        inside = (cats >= 1) & (cats <= width)
        at_candidate = shares.gather(1, (cats - 1).clamp(0, width - 1).unsqueeze(1)).squeeze(1) * inside  # (B,)
        interest = shares @ self.cat_embedding.weight[1:width + 1]  # (B, Ec)
        return torch.cat([at_candidate.unsqueeze(1), interest * self.cat_embedding(cats)], dim=1)

    def position_logit(self, position: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B,) the position tower's offset: slot p is row p + 1 (the last row holds every
        later slot), unknown (-1 or None) is row 0, which stays 0."""
        if self.position_tower is None or position is None:
            return torch.zeros(batch, device=device)
        rows = (position.long() + 1).clamp(0, self.config.position_buckets - 1)
        return self.position_tower(rows).squeeze(-1)

    def _normalise(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        safe = torch.where(std > 0, std, torch.ones_like(std))
        return torch.nan_to_num((x.float() - mean) / safe, nan=0.0, posinf=0.0, neginf=0.0)

    def forward_with_weights(self, item_idx, cat_idx, brand_idx, hist_items, hist_cats, hist_brands, hist_len,
                             user_dense, item_dense, als_score, position=None,
                             owner=None) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.config.history_length
        hist_items, hist_cats, hist_brands = (h[:, -length:] for h in (hist_items, hist_cats, hist_brands))  # (H, L)
        history_mask = masked_positions(hist_len.long(), hist_items.shape[1])  # (H, L)
        candidate = self.embed(item_idx, cat_idx, brand_idx)  # (B, E)
        # Only the real history entries are embedded and pooled (M of H * L; most are padding).
        hist_rows, cols = history_mask.nonzero(as_tuple=True)  # (M,), (M,)
        real = self.embed(hist_items[hist_rows, cols], hist_cats[hist_rows, cols], hist_brands[hist_rows, cols])
        if owner is None:
            mask, rows, entry = history_mask, hist_rows, None
        else:
            mask, rows, entry = shared_history_pairs(history_mask, owner.long())
            user_dense = user_dense[owner.long()]
        pooled, weights = self.pooling.packed(real, rows, candidate, mask, entry)  # (B, E), (B, L)
        dense = [
            self._normalise(user_dense, self.user_mean, self.user_std),  # (B, U)
            self._normalise(item_dense, self.item_mean, self.item_std),  # (B, I)
        ]
        if self.config.use_als_score:
            als = (als_score.float() - self.config.als_score_mean) / (self.config.als_score_std or 1.0)
            dense.append(torch.nan_to_num(als, nan=0.0).unsqueeze(1))  # (B, 1)
        if self.config.pooled_similarity:
            # Attention that picks the nearest history item makes this the similarity to it;
            # for mean pooling it is the similarity to the mean of the history.
            dense.append(nn.functional.cosine_similarity(pooled, candidate, dim=1, eps=1e-6).unsqueeze(1))  # (B, 1)
        if self.share_width > 0:
            dense.append(self.category_interest(user_dense, cat_idx))  # (B, 1 + Ec)
        x = torch.cat([pooled, candidate, pooled * candidate, *dense], dim=1)  # (B, 3E + U + I + 1 [+ 1 + Ec])
        logits = self.head(x).squeeze(1) + self.position_logit(position, len(x), x.device)  # (B,)
        return logits, weights  # (B,), (B, L)

    def forward(self, item_idx, cat_idx, brand_idx, hist_items, hist_cats, hist_brands, hist_len, user_dense,
                item_dense, als_score, position=None, owner=None) -> torch.Tensor:
        return self.forward_with_weights(item_idx, cat_idx, brand_idx, hist_items, hist_cats, hist_brands,
                                         hist_len, user_dense, item_dense, als_score, position, owner)[0]


def shared_history_pairs(history_mask: torch.Tensor, owner: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (candidate, history entry) pairs when candidate b has history `owner[b]`.

    Args:
        history_mask: (H, L) the real positions of each history (left-padded).
        owner: (B,) the history of each candidate.

    Returns:
        mask (B, L) of each candidate's real positions, rows (N,) and entry (N,): pair n
        is candidate rows[n] with entry[n] of the histories' real entries in row-major
        order, the pairs themselves in row-major order of `mask`.
    """
    mask = history_mask[owner]  # (B, L)
    rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,)
    counts = history_mask.sum(dim=1)  # (H,)
    first_entry = counts.cumsum(0) - counts  # (H,)
    first_col = history_mask.shape[1] - counts  # (H,) left-padded: the real entries come last
    history = owner[rows]  # (N,)
    return mask, rows, first_entry[history] + cols - first_col[history]


def build_model(config: RankerModelConfig | Mapping[str, Any]) -> RankerModel:
    """A fresh network for a config (or its dict form, as saved in checkpoints)."""
    if not isinstance(config, RankerModelConfig):
        config = RankerModelConfig.from_dict(config)
    return RankerModel(config)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor | None]:
    """The forward arguments, in order, from a batch keyed by column name; a batch without
    positions (the consumer's) scores at the unknown position."""
    return [batch.get(name) if name == "position" else batch[name] for name in INPUTS]
