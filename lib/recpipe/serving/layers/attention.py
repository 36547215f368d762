"""Pooling of a behaviour history into one vector: DIN target attention, or a masked mean.

Histories are left-padded: of L positions the last `hist_len` are real. A padded position
contributes exactly nothing to the pooled vector: its weight is replaced by 0 with
`torch.where` (not multiplied by a mask), so whatever ids or values sit there, even inf
or NaN, the output is bit-for-bit the same.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .mlp import MLP

WEIGHTINGS = ("sigmoid", "softmax")


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

    Args:
        dim: E, the size of an item representation.
        hidden: widths of the unit's hidden layers.
        weighting: `sigmoid` or `softmax`.

    Shapes: history (B, L, E), candidate (B, E), mask (B, L) → pooled (B, E), weights (B, L).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32), weighting: str = "softmax"):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown attention weighting {weighting!r}; expected one of {WEIGHTINGS}")
        self.weighting = weighting
        # PReLU here, never Dice: Dice's batch statistics would mix padded positions into
        # the activations of real ones.
        self.unit = MLP(4 * dim, hidden, activation="prelu", out_dim=1)

    def forward(self, history: torch.Tensor, candidate: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros((), dtype=history.dtype, device=history.device)
        history = torch.where(mask.unsqueeze(-1), history, zeros)  # (B, L, E): padding never enters the unit
        c = candidate.unsqueeze(1).expand_as(history)  # (B, L, E)
        feats = torch.cat([history, c, history - c, history * c], dim=-1)  # (B, L, 4E)
        scores = self.unit(feats).squeeze(-1)  # (B, L)
        weights = self._weights(scores, mask)  # (B, L), exactly 0 at padding
        pooled = torch.einsum("bl,ble->be", weights, history)  # (B, E)
        return pooled, weights

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
    """

    def forward(self, history: torch.Tensor, candidate: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = mask.sum(dim=1, keepdim=True).clamp_min(1).to(history.dtype)  # (B, 1)
        zeros = torch.zeros((), dtype=history.dtype, device=history.device)
        weights = torch.where(mask, 1.0 / counts, zeros)  # (B, L)
        history = torch.where(mask.unsqueeze(-1), history, zeros)  # (B, L, E)
        return torch.einsum("bl,ble->be", weights, history), weights
