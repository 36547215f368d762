"""Retrieval metrics on the held-out day, for ALS and its baselines, on the same users.

Recall, NDCG and MAP at K come from Spark's RankingEvaluator; hit rate and catalogue
coverage (which it does not offer) are built-in array expressions.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.schema import EVENT_TYPE, ITEM_IDX, TS, USER_IDX

PREDICTION = "prediction"
RELEVANT = "relevant"
POSITIVE_TYPES = ("click", "add_to_cart", "purchase")

EVALUATOR_METRICS = {"recall": "recallAtK", "ndcg": "ndcgAtK", "map": "meanAveragePrecisionAtK"}


def relevant_items(events: DataFrame, day: dt.date, positive_types: Iterable[str] = POSITIVE_TYPES,
                   days: int = 1) -> DataFrame:
    """(user_idx, relevant): the distinct items each user engaged with positively on `day`
    and the `days` - 1 days after it."""
    start = dt.datetime.combine(day, dt.time())
    end = start + dt.timedelta(days=days)
    return (
        events
        .where((F.col(TS) >= F.lit(start)) & (F.col(TS) < F.lit(end)))
        .where(F.col(EVENT_TYPE).isin(list(positive_types)))
        .groupBy(USER_IDX)
        .agg(F.array_sort(F.collect_set(ITEM_IDX)).alias(RELEVANT))
    )


def ranked_lists(candidates: DataFrame, score: str, max_k: int) -> DataFrame:
    """(user_idx, prediction): each user's items, best first, at most max_k."""
    ordered = F.array_sort(F.collect_list(F.struct((-F.col(score)).alias("neg"), F.col(ITEM_IDX).alias("item"))))
    return (
        candidates
        .groupBy(USER_IDX)
        .agg(F.slice(ordered, 1, max_k).alias("ranked"))
        .select(USER_IDX, F.col("ranked.item").alias(PREDICTION))
    )


def popularity_lists(interactions: DataFrame, seen: DataFrame, users: DataFrame, max_k: int) -> DataFrame:
    """The global-popularity baseline: most-interacted items, minus what each user has seen.

    Popularity counts users with a positive rating per item over the training window.
    """
    max_seen = seen.agg(F.max(F.size("seen"))).first()[0] or 0
    popular = (
        interactions
        .where(F.col("rating") > 0)
        .groupBy(ITEM_IDX)
        .agg(F.count("*").alias("users"))
        .orderBy(F.desc("users"), ITEM_IDX)
        .limit(max_k + max_seen)
        .agg(F.collect_list(ITEM_IDX).alias("popular"))  # one small row: the ranking itself
    )
    return (
        users
        .join(seen, USER_IDX, "left")
        .crossJoin(popular)
        .select(
            USER_IDX,
            F.slice(F.array_except("popular", F.coalesce("seen", F.array().cast("array<int>"))), 1, max_k).alias(PREDICTION),
        )
    )


def retrieval_metrics(predictions: DataFrame, relevant: DataFrame, ks: Iterable[int], catalogue_size: int) -> dict[str, float]:
    """Recall, NDCG, MAP, hit rate and catalogue coverage at each K.

    Args:
        predictions: (user_idx, prediction array<int>, best first).
        relevant: (user_idx, relevant array<int>); users absent from `predictions` count
            as empty lists, so a method cannot look better by covering fewer users.
        catalogue_size: items in the catalogue, the denominator of coverage.
    """
    joined = (
        relevant
        .join(predictions, USER_IDX, "left")
        .select(
            F.coalesce(PREDICTION, F.array().cast("array<int>")).cast("array<double>").alias(PREDICTION),
            F.col(RELEVANT).cast("array<double>").alias(RELEVANT),
        )
        # One partition per core, not per shuffle partition: the evaluator runs a job per
        # metric and K over these few rows (one per user), and each task is fixed cost.
        .coalesce(predictions.sparkSession.sparkContext.defaultParallelism)
        .cache()
    )
    metrics = {}
    for k in ks:
        for name, evaluator_metric in EVALUATOR_METRICS.items():
            evaluator = RankingEvaluator(predictionCol=PREDICTION, labelCol=RELEVANT, metricName=evaluator_metric, k=k)
            metrics[f"{name}_at_{k}"] = evaluator.evaluate(joined)
    # Every K's hit rate in one job and every K's coverage in another, not two jobs per K.
    hits = joined.agg(*[F.avg((F.size(F.array_intersect(F.slice(PREDICTION, 1, k), RELEVANT)) > 0).cast("double"))
                        .alias(str(k)) for k in ks]).first()
    ranked = joined.select(F.posexplode(PREDICTION).alias("_rank", ITEM_IDX))
    covered = ranked.agg(*[F.countDistinct(F.when(F.col("_rank") < k, F.col(ITEM_IDX))).alias(str(k))
                           for k in ks]).first()
    for k in ks:
        metrics[f"hit_rate_at_{k}"] = float(hits[str(k)])
        metrics[f"coverage_at_{k}"] = covered[str(k)] / max(catalogue_size, 1)
    joined.unpersist()
    return metrics
