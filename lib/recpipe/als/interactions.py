"""The user × item confidence matrix that implicit ALS factorises."""

from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recpipe.schema import EVENT_TYPE, ITEM_IDX, TS, USER_IDX, require_columns

RATING = "rating"


def event_weight(weights: Mapping[str, float]) -> Column:
    """The configured weight of each row's event type; unlisted types weigh 0."""
    expr = F.lit(0.0)
    for event_type, weight in weights.items():
        expr = F.when(F.col(EVENT_TYPE) == event_type, F.lit(float(weight))).otherwise(expr)
    return expr


def build_interactions(
    events: DataFrame,
    weights: Mapping[str, float],
    cutoff: dt.date,
    train_days: int,
    decay_half_life_days: float = 0.0,
) -> DataFrame:
    """Sum event weights per (user, item) over the `train_days` days before `cutoff`.

    A negative weight on impressions makes a seen-but-never-clicked item a confident
    negative: Spark's implicit ALS reads a rating r as preference (r > 0) with confidence
    1 + alpha·|r|. Pairs that sum to exactly 0 carry no information and are dropped.

    Returns:
        (user_idx, item_idx, rating) sorted by user and item, because ALS needs a
        deterministic input to recompute lost blocks correctly (SPARK-28927).
    """
    require_columns(events, (USER_IDX, ITEM_IDX, EVENT_TYPE, TS), "build_interactions")
    start = dt.datetime.combine(cutoff - dt.timedelta(days=train_days), dt.time())
    end = dt.datetime.combine(cutoff, dt.time())
    weight = event_weight(weights)
    if decay_half_life_days > 0:
        age_days = (F.lit(end).cast("long") - F.col(TS).cast("long")) / 86400.0
        weight = weight * F.pow(F.lit(0.5), age_days / decay_half_life_days)
    return (
        events
        .where((F.col(TS) >= F.lit(start)) & (F.col(TS) < F.lit(end)))
        .groupBy(USER_IDX, ITEM_IDX)
        .agg(F.sum(weight).cast("float").alias(RATING))
        .where(F.col(RATING) != 0)
        .orderBy(USER_IDX, ITEM_IDX)
    )


def seen_items(interactions: DataFrame) -> DataFrame:
    """(user_idx, seen) where seen is the sorted array of items the user interacted with."""
    return interactions.groupBy(USER_IDX).agg(F.array_sort(F.collect_set(ITEM_IDX)).alias("seen"))
