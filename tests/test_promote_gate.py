"""The champion/challenger decision on hand-made scores (no models, no registry)."""

from __future__ import annotations

import numpy as np
import pytest

from recpipe.config import PromoteConfig
from recpipe.registry.gate import Scored, decide, score_summary

RULES = PromoteConfig(min_gauc_gain=0.01, min_auc_gain=0.0, split="test", checked_rows=1000, rows_per_frame=100_000)


def scored(auc: float, gauc: float, nan: int = 0, coverage: float = 1.0) -> Scored:
    return Scored(auc, gauc, nan, coverage)


BASELINES = {"als": scored(0.62, 0.61), "popularity": scored(0.66, 0.65)}


def test_a_challenger_beating_the_champion_by_the_margin_is_promoted():
    decision = decide(scored(0.75, 0.74), scored(0.73, 0.72), BASELINES, RULES)
    assert decision.promote and "beats the champion" in decision.reason


@pytest.mark.parametrize("challenger", [scored(0.75, 0.725), scored(0.72, 0.74), scored(0.73, 0.72)])
def test_a_challenger_short_of_the_margin_on_gauc_or_worse_on_auc_is_rejected(challenger):
    decision = decide(challenger, scored(0.73, 0.72), BASELINES, RULES)
    assert not decision.promote and "does not beat the champion" in decision.reason


@pytest.mark.parametrize("challenger", [scored(0.9, 0.9, nan=1), scored(0.9, 0.9, coverage=0.99)])
def test_nan_scores_or_missing_rows_are_never_promoted(challenger):
    assert not decide(challenger, None, BASELINES, RULES).promote
    assert not decide(challenger, scored(0.5, 0.5), BASELINES, RULES).promote


def test_without_a_champion_the_first_version_must_beat_every_baseline_on_both_metrics():
    assert decide(scored(0.70, 0.70), None, BASELINES, RULES).promote
    lost = decide(scored(0.70, 0.64), None, BASELINES, RULES)
    assert not lost.promote and "popularity gauc" in lost.reason
    assert not decide(scored(0.66, 0.70), None, BASELINES, RULES).promote  # a tie is not a win


def test_a_champion_that_cannot_score_means_no_promotion_whatever_the_challenger():
    broken = scored(float("nan"), float("nan"), nan=100, coverage=1.0)
    for challenger in (scored(0.70, 0.70), scored(0.99, 0.99)):
        decision = decide(challenger, broken, BASELINES, RULES)
        assert not decision.promote and "champion's scores are incomplete" in decision.reason


@pytest.mark.parametrize("margin", ["-.inf", ".nan", ".inf", "-0.01"])  # YAML spells infinity .inf
@pytest.mark.parametrize("key", ["min_gauc_gain", "min_auc_gain"])
def test_a_margin_that_is_not_finite_and_at_least_zero_is_a_config_error(make_config, key, margin):
    from recpipe.errors import ConfigError
    from recpipe.registry.gate import check_margins

    rules = make_config(f"promote.{key}={margin}").promote  # it loads; the gate refuses it
    with pytest.raises(ConfigError, match=f"promote.{key} must be a finite number >= 0"):
        check_margins(rules)
    with pytest.raises(ConfigError, match=f"promote.{key}"):  # the decision function called directly
        decide(scored(0.51, 0.51), scored(0.90, 0.90), BASELINES, rules)


def test_checking_no_row_against_the_signature_is_a_config_error(make_config):
    import datetime as dt

    from recpipe.errors import ConfigError
    from recpipe.registry import promote

    with pytest.raises(ConfigError, match="promote.checked_rows must be at least 1"):  # before any read
        promote.run(None, make_config("promote.checked_rows=0"), dt.date(2026, 11, 14))
    with pytest.raises(ConfigError, match="promote.rows_per_frame must be at least 1"):
        promote.run(None, make_config("promote.rows_per_frame=0"), dt.date(2026, 11, 14))


def test_score_summary_counts_nan_rows_and_scores_the_rest():
    labels = np.array([1, 0, 1, 0, 1, 0])
    users = np.array([1, 1, 2, 2, 3, 3])
    summary = score_summary(labels, users, np.array([0.9, 0.1, 0.8, 0.2, np.nan, 0.5]))
    assert summary.nan_scores == 1 and summary.coverage == 1.0 and not summary.complete
    assert summary.auc == 1.0 and summary.gauc == 1.0
    assert score_summary(labels, users, np.array([0.5, 0.5])).coverage == pytest.approx(2 / 6)
