"""The hidden click model: what makes a user click, as pure functions.

    logit = bias
          + similarity_weight * max_j cos(candidate, history_j)   # one specific recent item
          + popularity_weight * standardised log popularity
          - position_decay * position

The similarity is the MAX over the user's last `history_window` clicked items, not the
similarity to their mean: a user who clicked a running shoe and a cookbook is drawn to
the next running shoe, while the average of the two points at neither. Target attention
can find that; mean pooling blurs it. A user with no clicks yet gets a damped similarity
to the nearest of their interest centres instead, so early clicks still follow interests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClickParams:
    """Coefficients of the hidden click logit."""

    bias: float
    similarity_weight: float
    popularity_weight: float
    position_decay: float
    cold_start_damping: float

    @classmethod
    def from_config(cls, gen) -> "ClickParams":
        """The parameters named `click_*` and `cold_start_damping` in a `GenerateConfig`."""
        return cls(
            bias=gen.click_bias,
            similarity_weight=gen.click_similarity_weight,
            popularity_weight=gen.click_popularity_weight,
            position_decay=gen.click_position_decay,
            cold_start_damping=gen.cold_start_damping,
        )


def history_similarities(candidate_vecs: np.ndarray, history_vecs: np.ndarray,
                         history_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each candidate to its nearest history item and to the history mean.

    Batch dimensions broadcast, so one user's history (N, 1, H, D) serves all of their
    candidates (N, F, D) without copying.

    Args:
        candidate_vecs: (..., D) unit vectors.
        history_vecs: (..., H, D) unit vectors of recent clicked items.
        history_mask: (..., H) True where a history slot holds an item.

    Returns:
        max_sim, mean_sim: (...) float32; NaN where the history is empty.
    """
    sims = np.einsum("...d,...hd->...h", candidate_vecs, history_vecs)  # (..., H)
    mask = np.broadcast_to(history_mask, sims.shape)
    has_history = mask.any(axis=-1)
    max_sim = np.where(mask, sims, -np.inf).max(axis=-1)
    mean_vec = (history_vecs * history_mask[..., None]).sum(axis=-2)  # (..., D)
    norm = np.linalg.norm(mean_vec, axis=-1)
    mean_sim = (candidate_vecs * mean_vec).sum(axis=-1) / np.where(norm > 0, norm, 1.0)
    nan = np.float32(np.nan)
    return (np.where(has_history, max_sim, nan).astype(np.float32),
            np.where(has_history, mean_sim, nan).astype(np.float32))


def cold_start_similarity(candidate_vecs: np.ndarray, interest_vecs: np.ndarray,
                          interest_mask: np.ndarray, damping: float) -> np.ndarray:
    """Damped cosine of each candidate to the nearest of the user's interest centres.

    Args:
        candidate_vecs: (..., D); interest_vecs: (..., K, D); interest_mask: (..., K).

    Returns:
        (...) float32; 0 for a user without interests.
    """
    sims = np.einsum("...d,...kd->...k", candidate_vecs, interest_vecs)
    mask = np.broadcast_to(interest_mask, sims.shape)
    nearest = np.where(mask, sims, -np.inf).max(axis=-1)
    return (damping * np.where(mask.any(axis=-1), nearest, 0.0)).astype(np.float32)


def click_probability(candidate_vecs: np.ndarray, history_vecs: np.ndarray, history_mask: np.ndarray,
                      popularity_z: np.ndarray, position: np.ndarray, params: ClickParams,
                      interest_vecs: np.ndarray | None = None,
                      interest_mask: np.ndarray | None = None) -> np.ndarray:
    """The true probability that a user clicks each candidate.

    Args:
        candidate_vecs: (..., D) unit vectors of the shown items.
        history_vecs: (..., H, D) the user's last clicked items (any order).
        history_mask: (..., H) True where a slot holds an item.
        popularity_z: (...) standardised log popularity of the candidates.
        position: (...) 0-based feed slot.
        params: the logit's coefficients.
        interest_vecs: (..., K, D) interest centres, for users with an empty history;
            without them such a user's similarity term is 0.
        interest_mask: (..., K) True where an interest is set.

    Returns:
        (...) float32 probabilities.
    """
    return click_model(candidate_vecs, history_vecs, history_mask, popularity_z, position, params,
                       interest_vecs, interest_mask)[0]


def click_model(candidate_vecs: np.ndarray, history_vecs: np.ndarray, history_mask: np.ndarray,
                popularity_z: np.ndarray, position: np.ndarray, params: ClickParams,
                interest_vecs: np.ndarray | None = None,
                interest_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`click_probability` together with the similarities behind it.

    Returns:
        p_click, max_sim, mean_sim: (...) float32; the similarities are NaN for a user
        with no history (whose probability used the cold-start prior).
    """
    max_sim, mean_sim = history_similarities(candidate_vecs, history_vecs, history_mask)
    if interest_vecs is None:
        cold = np.zeros_like(max_sim)
    else:
        cold = cold_start_similarity(candidate_vecs, interest_vecs, interest_mask, params.cold_start_damping)
    similarity = np.where(np.isnan(max_sim), cold, max_sim)
    logit = (params.bias
             + params.similarity_weight * similarity
             + params.popularity_weight * popularity_z
             - params.position_decay * position)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32), max_sim, mean_sim


def append_clicks(history: np.ndarray, clicked_items: np.ndarray) -> np.ndarray:
    """Histories after some new clicks: the last H of (old history, new clicks).

    Args:
        history: (N, H) item indexes, most recent last, -1 padded on the left.
        clicked_items: (N, F) new clicks in click order, -1 where no click.

    Returns:
        (N, H) updated histories in the same layout.
    """
    combined = np.concatenate([history, clicked_items], axis=1)
    # A stable sort on "is an item" moves the -1 gaps to the left and keeps click order.
    order = np.argsort(combined >= 0, axis=1, kind="stable")
    return np.take_along_axis(combined, order, axis=1)[:, -history.shape[1]:]
