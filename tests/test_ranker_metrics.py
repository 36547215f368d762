"""Ranker metrics on hand-made arrays, with exact expected values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from recpipe import metrics as M

pytestmark = pytest.mark.timeout(30)


def test_auc_counts_pairs_and_ties_count_one_half():
    labels = np.array([1, 0, 1, 0, 0])
    # positives 0.9 and 0.4; negatives 0.5, 0.4, 0.1: pairs won 3 + 0.5 (tie) + 1 + ... = (3 + 1.5) / 6
    scores = np.array([0.9, 0.5, 0.4, 0.4, 0.1])
    assert M.auc(labels, scores) == pytest.approx(4.5 / 6, abs=1e-15)
    assert M.auc([1, 1, 0, 0], [0.8, 0.7, 0.2, 0.1]) == 1.0
    assert M.auc([1, 1, 0, 0], [0.1, 0.2, 0.7, 0.8]) == 0.0
    assert M.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(M.auc([1, 1], [0.2, 0.3]))


def test_auc_agrees_with_scikit_learn_on_random_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 20, 500) / 20.0  # many ties
    assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_gauc_weights_each_users_auc_by_impressions_and_skips_one_class_users():
    users = np.array(["a", "a", "a", "a", "b", "b", "c", "c", "c"])
    labels = np.array([1, 0, 0, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.95, 0.2, 0.3, 0.5, 0.4, 0.3])
    # a: positive 0.9 beats 0.8, 0.1, loses to 0.95 → 2/3, 4 impressions
    # b: positive 0.2 below 0.3 → 0, 2 impressions; c: all clicked → skipped
    assert M.gauc(labels, scores, users) == pytest.approx((4 * 2 / 3 + 2 * 0.0) / 6, abs=1e-15)
    assert math.isnan(M.gauc([1, 0], [0.3, 0.2], ["x", "y"]))


def test_logloss_and_calibration():
    labels = np.array([1, 0, 0, 0])
    p = np.array([0.5, 0.5, 0.25, 0.25])
    expected = -(math.log(0.5) + math.log(0.5) + 2 * math.log(0.75)) / 4
    assert M.logloss(labels, p) == pytest.approx(expected, abs=1e-15)
    assert M.mean_prediction(labels, p) == 0.375
    assert M.observed_ctr(labels, p) == 0.25
    assert M.calibration(labels, p) == 1.5
    assert math.isfinite(M.logloss([1, 0], [0.0, 1.0]))  # clipped, not infinite


def test_evaluate_scores_applies_the_metrics_that_fit_the_scores():
    labels, scores, users = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.6]), np.array([1, 1, 2, 2])
    assert set(M.evaluate_scores(labels, scores)) == {"auc"}
    assert set(M.evaluate_scores(labels, scores, users)) == {"auc", "gauc"}
    out = M.evaluate_scores(labels, scores, users, probabilities=True)
    assert set(out) == {"auc", "gauc", "logloss", "mean_pred", "observed_ctr", "calibration"}
    assert out["auc"] == 0.75 and out["gauc"] == 0.5


def test_roc_curve_goes_from_0_0_to_1_1_through_each_threshold():
    fpr, tpr = M.roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.4]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0]


def test_every_method_is_compared_on_the_same_rows_and_against_the_oracle():
    from recpipe.ranker.evaluate import compare

    labels = np.array([1, 0, 1, 0, 0, 1])
    users = np.array([1, 1, 1, 2, 2, 2])
    model = np.array([0.9, 0.2, 0.6, 0.3, 0.1, 0.4])       # AUC 1.0
    popularity = np.array([3.0, 2.0, 1.0, 4.0, 5.0, 6.0])  # AUC 4/9
    oracle = np.array([0.8, 0.1, 0.7, np.nan, 0.2, 0.5])   # unknown for one row
    out = compare(labels, users, {"attention": model}, {"popularity": popularity}, oracle)
    assert out["test_attention_auc"] == 1.0 and out["test_popularity_auc"] == pytest.approx(4 / 9)
    assert "test_popularity_logloss" not in out and "test_attention_logloss" in out
    assert out["test_oracle_coverage"] == pytest.approx(5 / 6)
    assert out["test_oracle_auc"] == 1.0  # on the 5 rows it covers
    # On those 5 rows popularity ranks 3 of the 6 (positive, negative) pairs right.
    assert out["test_popularity_auc_vs_oracle"] == pytest.approx(3 / 6)
    assert out["test_attention_auc_vs_oracle"] == 1.0
    assert compare(labels, users, {"attention": model}, {}, None).keys() >= {"test_attention_gauc", "test_rows"}
