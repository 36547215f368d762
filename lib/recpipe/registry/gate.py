"""The champion/challenger decision, as a pure function of the scores both models gave.

A challenger replaces the champion only when its scores are complete (every row scored,
no NaN) and it beats the champion by the configured margins on gAUC and AUC. With no
champion yet, it must beat every baseline on both metrics instead. A champion that could
not score every row means no promotion: the gate fails closed, since the failure may be
the registry's or the store's and not the champion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from recpipe.config import PromoteConfig
from recpipe.errors import ConfigError
from recpipe.metrics import auc, gauc

METRICS = ("auc", "gauc")


@dataclass(frozen=True)
class Scored:
    """What one model's scores on the gate's rows came to."""

    auc: float
    gauc: float
    nan_scores: int
    coverage: float  # scored rows / rows

    @property
    def complete(self) -> bool:
        return self.nan_scores == 0 and self.coverage == 1.0

    def as_tags(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}_{k}": f"{getattr(self, k):.6f}" for k in ("auc", "gauc", "coverage")} | {
            f"{prefix}_nan_scores": str(self.nan_scores)}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def score_summary(labels: np.ndarray, users: np.ndarray, scores: np.ndarray) -> Scored:
    """AUC and gAUC on the rows with a finite score; how many rows had none."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = len(labels)
    finite = np.isfinite(scores) if len(scores) == rows else np.zeros(rows, dtype=bool)
    nan_scores = int(rows - finite.sum())
    coverage = float(min(len(scores), rows) / rows) if rows else 0.0
    if not finite.any():
        return Scored(float("nan"), float("nan"), nan_scores, coverage)
    y, s, u = labels[finite], scores[finite], users[finite]
    return Scored(auc(y, s), gauc(y, s, u), nan_scores, coverage)


def check_margins(rules: PromoteConfig) -> None:
    """ConfigError unless both margins are finite and at least 0 (a negative or infinite
    margin would promote a challenger worse than the champion)."""
    for key in ("min_gauc_gain", "min_auc_gain"):
        value = getattr(rules, key)
        if not (np.isfinite(value) and value >= 0.0):
            raise ConfigError(f"promote.{key} must be a finite number >= 0, got {value!r}")


def decide(challenger: Scored, champion: Scored | None, baselines: Mapping[str, Scored],
           rules: PromoteConfig) -> Decision:
    """Whether `challenger` becomes the champion, and why (one line)."""
    check_margins(rules)
    if not challenger.complete:
        return Decision(False, f"challenger scores incomplete: {challenger.nan_scores} NaN, "
                               f"coverage {challenger.coverage:.4f}")
    if champion is not None and not champion.complete:
        return Decision(False, f"the champion's scores are incomplete ({champion.nan_scores} NaN, coverage "
                               f"{champion.coverage:.4f}): no promotion until it can be compared")
    if champion is not None:
        gains = {"gauc": (challenger.gauc - champion.gauc, rules.min_gauc_gain),
                 "auc": (challenger.auc - champion.auc, rules.min_auc_gain)}
        short = [f"{m} gain {gain:+.4f} < {need:+.4f}" for m, (gain, need) in gains.items() if not gain >= need]
        if short:
            return Decision(False, "does not beat the champion: " + "; ".join(short))
        return Decision(True, "beats the champion: " + "; ".join(
            f"{m} {getattr(champion, m):.4f} -> {getattr(challenger, m):.4f}" for m in ("gauc", "auc")))
    lost = [f"{name} {m} {getattr(base, m):.4f} >= {getattr(challenger, m):.4f}"
            for name, base in baselines.items() for m in METRICS
            if not getattr(challenger, m) > getattr(base, m)]
    if lost:
        return Decision(False, "no champion to compare with, and it does not beat the baselines: " + "; ".join(lost))
    return Decision(True, "no champion yet; beats the baselines " + ", ".join(sorted(baselines)) +
                    f" (gauc {challenger.gauc:.4f}, auc {challenger.auc:.4f})")
