"""Figures logged with each training run (matplotlib's Agg backend, no display)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from recpipe.metrics import auc, roc_curve
from recpipe.ranker.data import FEATURES
from recpipe.serving.model import RankerModel, model_inputs


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]):
    """ROC curves of every method on the same rows, AUC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, values in scores.items():
        fpr, tpr = roc_curve(labels, values)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(labels, values):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the test split")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def training_curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]]):
    """Train loss, validation logloss and validation AUC per epoch, one line per model."""
    plt = _pyplot()
    panels = (("train_loss", "train loss"), ("valid_logloss", "valid logloss"), ("valid_auc", "valid AUC"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, history in histories.items():
            points = [(h["epoch"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set(title=title, xlabel="epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def attention_heatmap_figure(model: RankerModel, arrays: Mapping[str, np.ndarray], item_names: Mapping[int, str],
                             users: int = 3, candidates: int = 8, positions: int = 12, seed: int = 0):
    """For a few users, which history items the model weighted for which candidate.

    Users are drawn among those with several candidates sharing one history (the same
    moment) and at least 3 history items; rows are candidates (clicked ones marked *),
    columns the most recent history items, oldest left.
    """
    plt = _pyplot()
    chosen = _heatmap_groups(arrays, users, candidates, seed)
    fig, axes = plt.subplots(len(chosen) or 1, 1, figsize=(9, 2.6 * max(len(chosen), 1)), squeeze=False)
    model.eval()
    for ax, rows in zip(axes[:, 0], chosen):
        batch = {name: torch.as_tensor(np.ascontiguousarray(arrays[name][rows])) for name in FEATURES}
        weights = model.forward_with_weights(*model_inputs(batch))[1].float().numpy()  # (C, L)
        length = int(arrays["hist_len"][rows[0]])
        shown = min(length, positions)
        history = arrays["hist_items"][rows[0]][-shown:]
        image = ax.imshow(weights[:, -shown:], aspect="auto", cmap="viridis")
        ax.set_xticks(range(shown), [item_names.get(int(i), str(i)) for i in history], rotation=60, fontsize=7)
        ax.set_yticks(range(len(rows)), [
            ("* " if arrays["label"][r] > 0.5 else "") + item_names.get(int(arrays["item_idx"][r]), "?") for r in rows
        ], fontsize=7)
        ax.set_title(f"user {int(arrays['user_idx'][rows[0]])}: candidates × recent history (weights)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def _heatmap_groups(arrays: Mapping[str, np.ndarray], users: int, candidates: int, seed: int) -> list[list[int]]:
    """Row indexes of up to `users` (user, history) groups with >= 3 candidates."""
    groups: dict[tuple, list[int]] = {}
    for row in np.flatnonzero(arrays["hist_len"] >= 3):
        key = (int(arrays["user_idx"][row]), arrays["hist_items"][row].tobytes())
        groups.setdefault(key, []).append(int(row))
    eligible = [rows for rows in groups.values() if len(rows) >= 3]
    # Prefer groups with a click: they show what the model attended to for a clicked item.
    eligible.sort(key=lambda rows: (-int(any(arrays["label"][r] > 0.5 for r in rows)), -len(rows), rows[0]))
    rng = np.random.default_rng(seed)
    picked = eligible[: max(users * 3, users)]
    if len(picked) > users:
        picked = [picked[i] for i in sorted(rng.choice(len(picked), users, replace=False))]
    return [rows[:candidates] for rows in picked]
