"""Fully connected stacks with the activations DIN uses: PReLU or Dice."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("prelu", "dice", "relu")


class PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dimension, so that it also applies to
    (B, L, dim) inputs (torch's nn.PReLU takes dimension 1 as the channels).

    Args:
        dim: features of the last dimension.
        init: initial slope of the negative part.
    """

    def __init__(self, dim: int, init: float = 0.25):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel, on a 2-D view whose channels are the last dimension
        return F.prelu(x.reshape(-1, x.shape[-1]), self.alpha).reshape(x.shape)  # (..., dim)


class Dice(nn.Module):
    """Data-adaptive activation (DIN, Zhou et al. 2018): a PReLU whose switch point follows
    the batch statistics of its input.

        p = sigmoid(BN(x));  f(x) = p * x + (1 - p) * alpha * x

    Args:
        dim: features of the input, the last dimension of x (B, dim).
        eps: added to the variance.
    """

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x))  # (B, dim)
        return p * x + (1 - p) * self.alpha * x


def activation_layer(name: str, dim: int) -> nn.Module:
    """The activation called `name` for `dim` features (PReLU and Dice learn per feature)."""
    if name == "prelu":
        return PReLU(dim)
    if name == "dice":
        return Dice(dim)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class MLP(nn.Module):
    """Linear → activation → dropout blocks, then an optional linear output.

    Args:
        in_dim: input features.
        hidden: widths of the hidden layers.
        activation: `prelu`, `dice` or `relu`.
        dropout: dropout after each hidden layer.
        out_dim: width of the final linear layer; None for no output layer.

    Input (B, in_dim) → output (B, out_dim or hidden[-1]).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], activation: str = "prelu", dropout: float = 0.0,
                 out_dim: int | None = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), activation_layer(activation, size)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
