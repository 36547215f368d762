"""Point-in-time activity features: Spark transforms from events to user and item features.

Dense features are computed in one pass for every day they are needed (day D for the
tables, each impression's day for the samples): events are first reduced to one row per
(user, day) and (item, day), then a range window over the day number sums the days
[d - w, d - 1] for each probe row (entity, d). No job per day, and the window work per
entity is bounded by its active days, not by its events.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.etl.feature_names import activity_names, count_name, ctr_name
from recpipe.etl.sequences import DAY_MS, EVENT_DAY
from recpipe.schema import (
    CAT_IDX,
    EVENT_TYPE,
    EVENT_TYPES,
    FAV_CATS,
    ITEM_DENSE,
    ITEM_IDX,
    PADDING_IDX,
    PRICE,
    RECENCY_DAYS,
    TS_MS,
    USER_DENSE,
    USER_IDX,
    require_columns,
)

_LAST_MS = "_last_interaction_ms"
_CAT_COUNTS = "_cat_counts"   # per (user, day): impressions per category, an array over cat_idx 1..C
_COUNT = "_count"
CATEGORY_SHARES = "_impression_category_shares"
_PROBE = "_probe"
FROM_DAY, TO_DAY = "_from_day", "_to_day"   # the epoch days a catalogue snapshot applies to
_SPAN_ITEM = "_span_item_idx"


def daily_activity(events: DataFrame, key: str, interaction_types: tuple) -> DataFrame:
    """One row per (key, day) with events: a count per event type and the last interaction.

    Args:
        events: events with `ts_ms` and `event_day` (see `with_event_time`).
        key: `user_idx` or `item_idx`.
        interaction_types: event types whose latest `ts_ms` is kept (for recency).

    Returns:
        `key`, `event_day`, `n_<type>` per event type, `_last_interaction_ms` (null when
        the day had only impressions).
    """
    require_columns(events, [key, EVENT_TYPE, TS_MS, EVENT_DAY], "daily_activity")
    return (
        events
        .groupBy(key, EVENT_DAY)
        .agg(
            *[F.count_if(F.col(EVENT_TYPE) == t).alias(f"n_{t}") for t in EVENT_TYPES],
            F.max(F.when(F.col(EVENT_TYPE).isin(*interaction_types), F.col(TS_MS))).alias(_LAST_MS),
        )
    )


def rolling_activity(daily: DataFrame, targets: DataFrame, key: str, windows_days: tuple,
                     lookback_days: int) -> DataFrame:
    """Activity of each target (key, day) over the windows before that day's cut-off.

    The features of (k, d) use the days d - w .. d - 1 only, i.e. events before d 00:00
    UTC: a probe row per target is added to the daily rows, and range windows over the
    day number ending one day before the probe sum the counts.

    Args:
        daily: the output of `daily_activity`.
        targets: distinct (`key`, `event_day`) pairs to compute features for.
        windows_days: window lengths in days, e.g. (1, 7, 30).
        lookback_days: how far back recency looks for the last interaction.

    Returns:
        `key`, `event_day`, `<type>_<w>d` counts, `ctr_<w>d` (clicks / impressions, 0 when
        there were no impressions, at most 1) and `recency_days` (days from the last
        interaction to the cut-off; null when none within `lookback_days`).
    """
    counts = [f"n_{t}" for t in EVENT_TYPES]
    probes = (
        targets
        .select(key, EVENT_DAY, *[F.lit(0).cast("long").alias(c) for c in counts],
                F.lit(None).cast("long").alias(_LAST_MS), F.lit(True).alias(_PROBE))
    )
    rows = (
        daily
        .select(key, EVENT_DAY, *counts, _LAST_MS, F.lit(False).alias(_PROBE))
        .unionByName(probes)
    )
    by_day = Window.partitionBy(key).orderBy(EVENT_DAY)
    window_sums = [
        F.coalesce(F.sum(f"n_{t}").over(by_day.rangeBetween(-w, -1)), F.lit(0)).alias(count_name(t, w))
        for w in windows_days for t in EVENT_TYPES
    ]
    last_ms = F.max(_LAST_MS).over(by_day.rangeBetween(-lookback_days, -1))
    cutoff_ms = F.col(EVENT_DAY).cast("long") * F.lit(DAY_MS)
    recency = ((cutoff_ms - last_ms) / F.lit(float(DAY_MS))).alias(RECENCY_DAYS)
    return (
        rows
        .select(key, EVENT_DAY, _PROBE, *window_sums, recency)
        .where(F.col(_PROBE))
        .select(key, EVENT_DAY, *[count_name(t, w) for w in windows_days for t in EVENT_TYPES],
                *[_ctr(w).alias(ctr_name(w)) for w in windows_days], RECENCY_DAYS)
    )


def daily_category_counts(impressions: DataFrame, item_categories: DataFrame, categories: int) -> DataFrame:
    """One row per (user, day) with impressions: how many of them showed each category.

    Args:
        impressions: events with `user_idx`, `item_idx`, `event_day`.
        item_categories: `item_idx`, `cat_idx`.
        categories: C; categories 1..C are counted (unknown, 0, is not).

    Returns:
        `user_idx`, `event_day`, `_cat_counts` (array<long> of C counts, cat_idx k at k - 1).
    """
    require_columns(impressions, [USER_IDX, ITEM_IDX, EVENT_DAY], "daily_category_counts")
    per_category = (
        impressions
        .join(item_categories.select(ITEM_IDX, CAT_IDX), ITEM_IDX, "inner")
        .where(F.col(CAT_IDX).between(1, categories))
        .groupBy(USER_IDX, EVENT_DAY, CAT_IDX)
        .agg(F.count(F.lit(1)).alias(_COUNT))
        .groupBy(USER_IDX, EVENT_DAY)
        .agg(F.map_from_entries(F.collect_list(F.struct(CAT_IDX, _COUNT))).alias("_by_cat"))
    )
    dense = F.transform(F.sequence(F.lit(1), F.lit(categories)),
                        lambda k: F.coalesce(F.element_at(F.col("_by_cat"), k), F.lit(0)).cast("long"))
    return per_category.select(USER_IDX, EVENT_DAY, dense.alias(_CAT_COUNTS))


def impression_category_shares(daily_counts: DataFrame, targets: DataFrame, categories: int,
                               lookback_days: int) -> DataFrame:
    """Each target (user, day)'s impressions per category over the days d - lookback .. d - 1,
    as shares of all of them: what the feed has been showing a user, which follows their
    interests even before their first click (all zeros when there were none).

    Point in time like every user feature: only days before the target day's cut-off
    count, so no impression at or after a sample's own time (nor earlier that day) does.

    Returns:
        `user_idx`, `event_day`, `_impression_category_shares` (array<float> of C shares).
    """
    zeros = F.array_repeat(F.lit(0).cast("long"), categories)
    rows = (
        daily_counts.select(USER_IDX, EVENT_DAY, _CAT_COUNTS, F.lit(False).alias(_PROBE))
        .unionByName(targets.select(USER_IDX, EVENT_DAY, zeros.alias(_CAT_COUNTS), F.lit(True).alias(_PROBE)))
    )
    before = Window.partitionBy(USER_IDX).orderBy(EVENT_DAY).rangeBetween(-lookback_days, -1)
    summed = F.aggregate(F.collect_list(_CAT_COUNTS).over(before), zeros,
                         lambda total, day: F.zip_with(total, day, lambda a, b: a + b))
    return (
        rows
        .select(USER_IDX, EVENT_DAY, _PROBE, summed.alias("_summed"))
        .where(F.col(_PROBE))
        .withColumn("_all", F.aggregate("_summed", F.lit(0).cast("long"), lambda a, b: a + b))
        .select(USER_IDX, EVENT_DAY,
                F.transform("_summed", lambda n: (n / F.greatest(F.col("_all"), F.lit(1))).cast("float"))
                .alias(CATEGORY_SHARES))
    )


def with_category_shares(user_asof: DataFrame, shares: DataFrame, categories: int) -> DataFrame:
    """`user_dense` with the category shares appended (zeros for a (user, day) without any)."""
    zeros = F.array_repeat(F.lit(0.0).cast("float"), categories)
    return (
        user_asof
        .join(shares, [USER_IDX, EVENT_DAY], "left")
        .withColumn(USER_DENSE, F.concat(F.col(USER_DENSE), F.coalesce(F.col(CATEGORY_SHARES), zeros)))
        .drop(CATEGORY_SHARES)
    )


def _ctr(days: int) -> Column:
    impressions = F.col(count_name("impression", days))
    clicks = F.col(count_name("click", days))
    # A click can outlive its impression's window (impression just before the window
    # starts), so the ratio is capped at 1.
    return F.when(impressions > 0, F.least(clicks / impressions, F.lit(1.0))).otherwise(F.lit(0.0))


def _dense_array(columns: list[str]) -> Column:
    """float32 array of the activity columns: log1p of counts, CTRs as they are."""
    return F.array(*[(F.col(c) if c.startswith("ctr_") else F.log1p(F.col(c))).cast("float") for c in columns])


def user_features_as_of(daily: DataFrame, targets: DataFrame, windows_days: tuple, lookback_days: int) -> DataFrame:
    """User activity features as of each target (user_idx, event_day) cut-off, plus `user_dense`.

    `user_dense` follows `user_dense_names`; a missing recency counts as `lookback_days`.
    """
    activity = activity_names(windows_days)
    recency = F.least(F.coalesce(F.col(RECENCY_DAYS), F.lit(float(lookback_days))), F.lit(float(lookback_days)))
    return (
        rolling_activity(daily, targets, USER_IDX, windows_days, lookback_days)
        .withColumn(USER_DENSE, F.concat(_dense_array(activity), F.array(F.log1p(recency).cast("float"))))
    )


def item_features_as_of(daily: DataFrame, targets: DataFrame, catalogue_days: DataFrame, windows_days: tuple,
                        lookback_days: int) -> DataFrame:
    """Item activity features as of each target (item_idx, event_day) cut-off, plus `item_dense`.

    Args:
        catalogue_days: the catalogue snapshots and the days each applies to (see
            `read_catalogue_days`).

    Returns:
        `item_idx`, `event_day`, `cat_idx` (0 = unknown), `price` (null = unknown), the
        activity columns and `item_dense` (following `item_dense_names`; unknown price = 0).
    """
    activity = activity_names(windows_days)
    return (
        rolling_activity(daily, targets, ITEM_IDX, windows_days, lookback_days)
        .drop(RECENCY_DAYS)
        .transform(lambda f: with_catalogue_of_the_day(f, catalogue_days))
        .withColumn(CAT_IDX, F.coalesce(F.col(CAT_IDX), F.lit(PADDING_IDX)))
        .withColumn(ITEM_DENSE, F.concat(
            _dense_array(activity),
            F.array(F.log1p(F.greatest(F.coalesce(F.col(PRICE), F.lit(0.0)), F.lit(0.0))).cast("float")),
        ))
    )


def favourite_categories(interactions: DataFrame, cutoff_ms: int, window_days: int, top: int) -> DataFrame:
    """Each user's `top` categories by interactions in the `window_days` before the cut-off.

    Ties go to the category interacted with most recently, then to the lower cat_idx.
    Unknown categories (cat_idx 0) are not favourites.

    Returns:
        `user_idx`, `fav_cats`: int32 array of length `top`, most interacted first,
        padded at the end with 0.
    """
    ranked = Window.partitionBy(USER_IDX).orderBy(F.col("_n").desc(), F.col("_last").desc(), F.col(CAT_IDX))
    favourites = (
        interactions
        .where(F.col(TS_MS).between(cutoff_ms - window_days * DAY_MS, cutoff_ms - 1))
        .where(F.col(CAT_IDX) != PADDING_IDX)
        .groupBy(USER_IDX, CAT_IDX)
        .agg(F.count(F.lit(1)).alias("_n"), F.max(TS_MS).alias("_last"))
        .withColumn("_rank", F.row_number().over(ranked))
        .where(F.col("_rank") <= top)
        .groupBy(USER_IDX)
        .agg(F.array_sort(F.collect_list(F.struct("_rank", CAT_IDX))).alias("_favs"))
    )
    cats = F.transform(F.col("_favs"), lambda x: x[CAT_IDX])
    return favourites.select(
        USER_IDX,
        F.concat(cats, F.array_repeat(F.lit(PADDING_IDX), F.lit(top) - F.size(cats))).alias(FAV_CATS),
    )


def active_before(daily: DataFrame, key: str, cutoff_day: int, lookback_days: int) -> DataFrame:
    """(key, event_day = cutoff_day) for every key with events in the lookback before the cut-off."""
    return (
        daily
        .where(F.col(EVENT_DAY).between(cutoff_day - lookback_days, cutoff_day - 1))
        .select(key)
        .distinct()
        .withColumn(EVENT_DAY, F.lit(cutoff_day))
    )


def with_catalogue_of_the_day(frame: DataFrame, catalogue_days: DataFrame) -> DataFrame:
    """Add `cat_idx` and `price` of the snapshot whose span holds each row's `event_day`
    (null where none does): an equi-join on the item, then the span check, so each item
    meets only its few snapshots."""
    spans = catalogue_days.withColumnRenamed(ITEM_IDX, _SPAN_ITEM)
    in_span = (F.col(ITEM_IDX) == F.col(_SPAN_ITEM)) & F.col(EVENT_DAY).between(F.col(FROM_DAY), F.col(TO_DAY))
    return frame.join(spans, in_span, "left").drop(_SPAN_ITEM, FROM_DAY, TO_DAY)


def build_user_features(user_asof: DataFrame, table_targets: DataFrame, favourites: DataFrame, cutoff_day: int,
                        windows_days: tuple, top_categories: int) -> DataFrame:
    """The user features table as of a cut-off day.

    Returns:
        One row per target user: `user_idx`, the activity columns, `recency_days`,
        `fav_cats` (length `top_categories`, 0-padded) and `user_dense`.
    """
    no_favourites = F.array_repeat(F.lit(PADDING_IDX), top_categories)
    return (
        user_asof
        .where(F.col(EVENT_DAY) == cutoff_day)
        .join(table_targets, [USER_IDX, EVENT_DAY], "left_semi")
        .join(favourites, USER_IDX, "left")
        .select(USER_IDX, *activity_names(windows_days), RECENCY_DAYS,
                F.coalesce(F.col(FAV_CATS), no_favourites).alias(FAV_CATS), USER_DENSE)
    )


def build_item_features(item_asof: DataFrame, cutoff_day: int, windows_days: tuple) -> DataFrame:
    """The item features table as of a cut-off day: `item_idx`, `cat_idx`, `price`,
    the activity columns and `item_dense`."""
    return (
        item_asof
        .where(F.col(EVENT_DAY) == cutoff_day)
        .select(ITEM_IDX, CAT_IDX, PRICE, *activity_names(windows_days), ITEM_DENSE)
    )
