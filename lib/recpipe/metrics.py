"""Ranking and calibration metrics: pure functions of numpy arrays.

`METRICS` names the metrics that apply to any score; `PROBABILITY_METRICS` those that
need a click probability (logloss, calibration). Callers look them up in these dicts.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_EPS = 1e-7


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, tied values sharing their average rank."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    # Boundaries of runs of equal values in the sorted scores.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    average = (starts + ends + 1) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half).

    Returns NaN when the labels hold a single class.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Group AUC (DIN): each user's AUC weighted by the user's impressions.

    Users whose impressions are all clicked or all unclicked are skipped. NaN when no
    user has both classes.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(users)
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    total, weight = 0.0, 0
    for start, end in zip(starts, ends):
        clicked = labels[start:end]
        if clicked.all() or not clicked.any():
            continue
        total += (end - start) * auc(clicked, scores[start:end])
        weight += end - start
    return float(total / weight) if weight else float("nan")


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mean_prediction(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean predicted click probability (compare with `observed_ctr`)."""
    return float(np.mean(probabilities))


def observed_ctr(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The share of clicked impressions."""
    return float(np.mean(np.asarray(labels) > 0.5))


def calibration(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean predicted CTR over observed CTR: 1 is calibrated, above 1 over-predicts."""
    observed = observed_ctr(labels, probabilities)
    return float(mean_prediction(labels, probabilities) / observed) if observed > 0 else float("nan")


# name → f(labels, scores); any score works.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
}

# name → f(labels, scores, users); group metrics.
GROUP_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "gauc": gauc,
}

# name → f(labels, probabilities); only for scores that are click probabilities.
PROBABILITY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "logloss": logloss,
    "mean_pred": mean_prediction,
    "observed_ctr": observed_ctr,
    "calibration": calibration,
}


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, users: np.ndarray | None = None,
                    probabilities: bool = False) -> dict[str, float]:
    """Every metric that applies to `scores`: ranking always, group metrics when `users`
    is given, logloss and calibration when the scores are probabilities."""
    out = {name: fn(labels, scores) for name, fn in METRICS.items()}
    if users is not None:
        out.update({name: fn(labels, scores, users) for name, fn in GROUP_METRICS.items()})
    if probabilities:
        out.update({name: fn(labels, scores) for name, fn in PROBABILITY_METRICS.items()})
    return out


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels) > 0.5
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores)[order], labels[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tpr = np.r_[0.0, tp / max(tp[-1], 1)] if len(tp) else np.array([0.0, 1.0])
    fpr = np.r_[0.0, fp / max(fp[-1], 1)] if len(fp) else np.array([0.0, 1.0])
    return fpr, tpr
