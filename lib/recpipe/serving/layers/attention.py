"""Pooling of a behaviour history into one vector: DIN target attention, or a masked mean.

Histories are left-padded: of L positions the last `hist_len` are real. A padded position
contributes exactly nothing to the pooled vector: its weight is replaced by 0 with
`torch.where` (not multiplied by a mask), so whatever ids or values sit there, even inf
or NaN, the output is bit-for-bit the same.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .mlp import MLP

WEIGHTINGS = ("sigmoid", "softmax")
SIMILARITIES = ("none", "cosine")


def masked_positions(hist_len: torch.Tensor, length: int) -> torch.Tensor:
    """Which of the `length` left-padded positions hold a real entry.

    Args:
        hist_len: (B,) real entries per row (clipped to 0..length).
        length: L.

    Returns:
        (B, L) bool, True for the last `hist_len` positions of each row.
    """
    positions = torch.arange(length, device=hist_len.device)  # (L,)
    first_real = length - hist_len.clamp(0, length)  # (B,)
    return positions.unsqueeze(0) >= first_real.unsqueeze(1)  # (B, L)


class AttentionPooling(nn.Module):
    """DIN's local activation unit: a weight per history item for one candidate.

    The unit is an MLP over [h, c, h - c, h * c] (history item h, candidate c) giving one
    score per position. `softmax` weighting (the default) normalises the scores over the
    real positions only: padded positions are excluded from the normalisation itself (not
    merely given a tiny weight), and a row with no real position pools to the zero vector.
    `sigmoid` takes sigmoid(score) as the weight and sums without normalising, as the DIN
    paper does to keep the intensity of an interest; its pooled vector grows with the
    history length (and histories repeat an item for click, cart and purchase), which
    trained worse on the generated data, while the intensity reaches the head anyway
    through the user's activity counts in `user_dense`.

    `similarity="cosine"` adds t * cos(h, c) to the unit's score, t a learned temperature
    (starting at 5): with softmax weighting a high t puts the weight on the one most
    similar history item, which the MLP unit can express only with many parameters.

    Args:
        dim: E, the size of an item representation.
        hidden: widths of the unit's hidden layers.
        weighting: `sigmoid` or `softmax`.
        similarity: `none` or `cosine`.

    Shapes: history (B, L, E), candidate (B, E), mask (B, L) → pooled (B, E), weights (B, L).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32), weighting: str = "softmax",
                 similarity: str = "none"):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown attention weighting {weighting!r}; expected one of {WEIGHTINGS}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown attention similarity {similarity!r}; expected one of {SIMILARITIES}")
        self.weighting = weighting
        self.log_temperature = nn.Parameter(torch.tensor(math.log(5.0))) if similarity == "cosine" else None
        # PReLU here, never Dice: Dice's batch statistics would mix padded positions into
        # the activations of real ones.
        self.unit = MLP(4 * dim, hidden, activation="prelu", out_dim=1)

    def forward(self, history: torch.Tensor, candidate: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,) in row-major order
        return self.packed(history[rows, cols], rows, candidate, mask)

    def packed(self, real: torch.Tensor, rows: torch.Tensor, candidate: torch.Tensor,
               mask: torch.Tensor, entry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` on the real entries only: `real` (N, E) are the history entries at
        `mask.nonzero()` (row-major), `rows` (N,) their rows. Histories are mostly padding
        (a few real items of L = 50 on the generated data), so the unit, the pooling and
        the caller's embedding look-ups run on N entries instead of B * L; padding is never
        read at all.

        With `entry` (N,), `real` holds each distinct history entry once (M, E) and pair n
        (row `rows[n]`) reads `real[entry[n]]`: rows that share a history (one user's
        candidates at scoring) embed it, and compute the unit's history term, once."""
        scores = self._unit_scores(real, entry, rows, candidate, mask)  # (B, L), 0 at padding
        weights = self._weights(scores, mask)  # (B, L), exactly 0 at padding
        pairs = real if entry is None else real[entry]  # (N, E)
        pooled = torch.zeros_like(candidate).index_add_(0, rows, weights[mask].unsqueeze(1) * pairs)  # (B, E)
        return pooled, weights

    def _unit_scores(self, real: torch.Tensor, entry: torch.Tensor | None, rows: torch.Tensor,
                     candidate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The unit's MLP over [h, c, h - c, h * c] for the real entries and their
        candidates, scattered back to (B, L).

        The first layer is linear, so W [h, c, h - c, h*c] + b is computed as
        (W_h + W_d) h + W_p (h*c) + (W_c - W_d) c + b without building the 4E-wide input:
        the same parameters and the same function, for less arithmetic. The h term is
        computed once per entry and the c term once per candidate; only W_p (h*c) is per pair.
        """
        first, rest = self.unit.net[0], self.unit.net[1:]
        w_h, w_c, w_d, w_p = first.weight.chunk(4, dim=1)  # each (H1, E)
        history_term = real @ (w_h + w_d).T  # (M or N, H1)
        candidate_term = candidate @ (w_c - w_d).T + first.bias  # (B, H1)
        if entry is not None:
            real, history_term = real[entry], history_term[entry]  # per pair: (N, E), (N, H1)
        c = candidate[rows]  # (N, E)
        hidden = history_term + (real * c) @ w_p.T + candidate_term[rows]  # (N, H1)
        values = rest(hidden).squeeze(-1)  # (N,)
        if self.log_temperature is not None:
            values = values + self.log_temperature.exp() * nn.functional.cosine_similarity(real, c, dim=-1, eps=1e-6)
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)

    def _weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros((), dtype=scores.dtype, device=scores.device)
        if self.weighting == "sigmoid":
            return torch.where(mask, torch.sigmoid(scores), zeros)
        minus_inf = torch.full_like(scores, float("-inf"))
        # The max over real positions only, detached (a constant shift); finite when all are masked.
        top = torch.where(mask, scores, minus_inf).amax(dim=1, keepdim=True).detach()
        top = top.clamp_min(torch.finfo(scores.dtype).min)  # (B, 1)
        # exp(-inf) = 0 at padding, with a zero (not NaN) gradient there.
        exp = torch.exp(torch.where(mask, scores - top, minus_inf))  # (B, L)
        return exp / exp.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


class MeanPooling(nn.Module):
    """The BaseModel's pooling: the mean of the real history items (zero when none).

    Shapes: history (B, L, E), candidate (B, E) (unused), mask (B, L) → pooled (B, E), weights (B, L).
    `packed` takes the real entries only (and optionally shared ones), as `AttentionPooling.packed` does.
    """

    def forward(self, history: torch.Tensor, candidate: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = mask.nonzero(as_tuple=True)
        return self.packed(history[rows, cols], rows, candidate, mask)

    def packed(self, real: torch.Tensor, rows: torch.Tensor, candidate: torch.Tensor,
               mask: torch.Tensor, entry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = real if entry is None else real[entry]  # (N, E)
        counts = mask.sum(dim=1, keepdim=True).clamp_min(1).to(real.dtype)  # (B, 1)
        zeros = torch.zeros((), dtype=real.dtype, device=real.device)
        weights = torch.where(mask, 1.0 / counts, zeros)  # (B, L)
        pooled = torch.zeros_like(candidate).index_add_(0, rows, weights[mask].unsqueeze(1) * pairs)  # (B, E)
        return pooled, weights
