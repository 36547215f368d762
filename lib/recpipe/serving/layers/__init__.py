"""Building blocks of the ranker, configured by dimensions only."""

from .attention import AttentionPooling, MeanPooling, masked_positions
from .mlp import MLP, Dice, PReLU, activation_layer

__all__ = ["AttentionPooling", "MeanPooling", "masked_positions", "MLP", "Dice", "PReLU", "activation_layer"]
