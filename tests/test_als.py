"""ALS candidate generation on tiny frames: interactions, blocked top-K, retrieval metrics."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import functions as F

from recpipe.als.evaluate import popularity_lists, relevant_items, retrieval_metrics
from recpipe.als.interactions import build_interactions, seen_items
from recpipe.als.stage import fit_als
from recpipe.als.topk import keep_best, top_k_block, top_k_candidates
from recpipe.config import load_config
from tests.conftest import LOCAL_CONF

pytestmark = pytest.mark.spark

D = dt.date(2026, 11, 10)
WEIGHTS = {"impression": -0.5, "click": 1.0, "purchase": 4.0}


def als_config(*overrides: str):
    return load_config(LOCAL_CONF, ["als.alpha=5.0", *overrides]).als


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour))


def events_frame(spark, rows):
    return spark.createDataFrame(rows, "user_idx int, item_idx int, event_type string, ts timestamp")


def test_interactions_sum_weights_inside_the_window_only(spark):
    events = events_frame(
        spark,
        [
            (1, 10, "impression", at(D - dt.timedelta(days=1))),
            (1, 10, "click", at(D - dt.timedelta(days=1))),
            (1, 11, "impression", at(D - dt.timedelta(days=2))),       # seen, never clicked: negative
            (1, 12, "purchase", at(D - dt.timedelta(days=3))),
            (1, 12, "add_to_cart", at(D - dt.timedelta(days=3))),      # unlisted type weighs 0
            (2, 10, "click", at(D - dt.timedelta(days=8))),            # before the 7-day window
            (2, 11, "click", at(D, 0)),                                # at the cut-off: excluded
            (3, 13, "impression", at(D - dt.timedelta(days=1))),
            (3, 13, "click", at(D - dt.timedelta(days=1))),
            (3, 13, "impression", at(D - dt.timedelta(days=1))),       # sums to exactly 0: dropped
        ],
    )
    rows = build_interactions(events, WEIGHTS, cutoff=D, train_days=7).collect()
    assert [(r.user_idx, r.item_idx, r.rating) for r in rows] == [(1, 10, 0.5), (1, 11, -0.5), (1, 12, 4.0)]


def test_time_decay_halves_per_half_life(spark):
    events = events_frame(spark, [(1, 10, "click", at(D - dt.timedelta(days=2), 0)), (1, 11, "click", at(D - dt.timedelta(days=4), 0))])
    rows = build_interactions(events, WEIGHTS, cutoff=D, train_days=7, decay_half_life_days=2.0).collect()
    assert {r.item_idx: r.rating for r in rows} == pytest.approx({10: 0.5, 11: 0.25})


def test_keep_best_orders_by_score_then_id():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]], dtype=np.float32)
    ids = np.array([[7, 3, 2, 9]])
    best_scores, best_ids = keep_best(scores, ids, 3)
    assert best_ids.tolist() == [[3, 2, 7]] and best_scores.tolist() == [[pytest.approx(0.9), 0.5, 0.5]]


def test_block_sizes_do_not_change_the_result():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(37, 4)).astype(np.float32)
    item_ids = np.arange(1, 38) * 3
    seen = [item_ids[rng.choice(37, size=5, replace=False)] for _ in range(20)]
    whole = top_k_block(users, item_ids, items, seen, 10, block_size=1000, user_block_size=1000)
    blocked = top_k_block(users, item_ids, items, seen, 10, block_size=4, user_block_size=3)
    assert np.array_equal(whole[0], blocked[0])
    assert np.allclose(whole[1], blocked[1])
    expected = users @ items.T
    for row, excluded in enumerate(seen):
        order = [i for i in np.argsort(-expected[row], kind="stable") if item_ids[i] not in set(excluded)][:10]
        assert whole[0][row].tolist() == item_ids[order].tolist()


@pytest.fixture(scope="module")
def small_model(spark, tmp_path_factory):
    rng = np.random.default_rng(3)
    rows = [(int(u), int(i), float(rng.integers(1, 5))) for u in range(1, 41) for i in rng.choice(np.arange(1, 61), size=8, replace=False)]
    interactions = spark.createDataFrame(rows, "user_idx int, item_idx int, rating float").orderBy("user_idx", "item_idx")

    spark.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    return interactions, fit_als(interactions, als_config("als.rank=6", "als.max_iter=5", "als.checkpoint_interval=2"), blocks=2)


def test_blocked_top_k_equals_recommend_for_all_users(small_model):
    _, model = small_model
    k = 15
    ours = top_k_candidates(model.userFactors, model.itemFactors, seen=None, k=k, block_size=7,
                            user_block_size=3).toPandas()
    spark_recs = model.recommendForAllUsers(k).select("user_idx", F.posexplode("recommendations")).select(
        "user_idx", (F.col("pos") + 1).alias("rank"), "col.item_idx", F.col("col.rating").alias("score")
    ).toPandas()
    assert len(ours) == len(spark_recs) == 40 * k
    for user, theirs in spark_recs.groupby("user_idx"):
        mine = ours[ours.user_idx == user].sort_values("rank")
        assert set(mine.item_idx) == set(theirs.item_idx), f"user {user}: different items"
        # Same order, except that items whose scores tie (to float error) may swap.
        for (_, a), (_, b) in zip(mine.iterrows(), theirs.sort_values("rank").iterrows()):
            assert a.item_idx == b.item_idx or math.isclose(a.als_score, b.score, rel_tol=1e-5, abs_tol=1e-6)
        assert np.allclose(mine.als_score.to_numpy(), theirs.sort_values("rank").score.to_numpy(), rtol=1e-5, atol=1e-6)


def test_candidates_exclude_seen_and_fill_min_k_unseen(small_model):
    interactions, model = small_model
    k = 55  # more than some users' unseen items (60 items, 8 seen each, not all items have factors)
    seen = seen_items(interactions)
    candidates = top_k_candidates(model.userFactors, model.itemFactors, seen, k=k, block_size=16,
                                  user_block_size=5).toPandas()
    items_with_factors = {r.id for r in model.itemFactors.collect()}
    seen_by_user = {r.user_idx: set(r.seen) for r in seen.collect()}
    for user, rows in candidates.groupby("user_idx"):
        assert not set(rows.item_idx) & seen_by_user[user]
        assert len(rows) == min(k, len(items_with_factors - seen_by_user[user]))
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows.als_score.is_monotonic_decreasing
    assert set(candidates.user_idx) == {r.id for r in model.userFactors.collect()}


def test_forty_iterations_complete_with_checkpointing(spark, small_model):
    interactions, _ = small_model

    model = fit_als(interactions, als_config("als.rank=4", "als.max_iter=40", "als.checkpoint_interval=5"), blocks=2)
    assert model.userFactors.count() == 40


def test_retrieval_metrics_exact_values(spark):
    predictions = spark.createDataFrame([(1, [5, 6, 7]), (2, [8, 5, 9])], "user_idx int, prediction array<int>")
    relevant = spark.createDataFrame([(1, [6, 10]), (2, [1]), (3, [5])], "user_idx int, relevant array<int>")
    metrics = retrieval_metrics(predictions, relevant, ks=[1, 2], catalogue_size=10)
    # user 1: hit at rank 2 of 2 relevant; user 2: no hit; user 3: no list at all (counts as empty)
    assert metrics["recall_at_2"] == pytest.approx((1 / 2) / 3)
    assert metrics["hit_rate_at_2"] == pytest.approx(1 / 3)
    assert metrics["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 3)
    assert metrics["map_at_2"] == pytest.approx((1 / 2) / 2 / 3)
    assert metrics["coverage_at_2"] == pytest.approx(3 / 10)  # {5, 6} and {8, 5} cover 3 items
    # K = 1, computed in the same passes as K = 2: no first item is relevant; {5} and {8}
    assert metrics["recall_at_1"] == metrics["hit_rate_at_1"] == 0.0
    assert metrics["coverage_at_1"] == pytest.approx(2 / 10)


def test_popularity_excludes_each_users_seen_items(spark):
    interactions = spark.createDataFrame(
        [(1, 10, 1.0), (2, 10, 1.0), (3, 10, 1.0), (1, 11, 1.0), (2, 11, 1.0), (1, 12, 1.0), (3, 13, -1.0)],
        "user_idx int, item_idx int, rating float",
    )
    users = spark.createDataFrame([(2,), (4,)], "user_idx int")
    lists = {r.user_idx: r.prediction for r in popularity_lists(interactions, seen_items(interactions), users, 2).collect()}
    assert lists == {2: [12], 4: [10, 11]}


def test_relevant_items_are_positive_engagements_of_the_day(spark):
    events = events_frame(
        spark,
        [(1, 10, "click", at(D)), (1, 11, "impression", at(D)), (1, 12, "purchase", at(D, 23)),
         (2, 10, "click", at(D - dt.timedelta(days=1))), (2, 13, "add_to_cart", at(D + dt.timedelta(days=1), 0))],
    )
    assert {r.user_idx: r.relevant for r in relevant_items(events, D).collect()} == {1: [10, 12]}
