"""Behaviour sequences: a user's last L interactions before a point in time.

Every sequence has the same layout: item ids (`hist_items`), their categories
(`hist_cats`) and brands (`hist_brands`) as int32 arrays of exactly L, oldest first and
most recent LAST, left-padded with 0, plus `hist_len`, the number of real entries. Interactions are ordered by
(`ts_ms`, `event_id`) so that ties are broken the same way on every run.

Two builds share that layout:

* `build_user_sequences`: one sequence per user as of a cut-off (the `sequences` table);
* `attach_histories`: one sequence per impression, from the interactions strictly before
  that impression's own timestamp (the ranker samples).

Neither is quadratic in the history length. `attach_histories` keeps one time-sorted
array per user (the last L interactions before the earliest impression plus every
interaction after it), counts with a running sum how many interactions precede each
impression (k), and slices the last min(k, L) of the first k entries.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.etl.catalogue import brand_column
from recpipe.schema import (
    BRAND_IDX, CAT_IDX, EVENT_ID, EVENT_TYPE, HIST_BRANDS, HIST_CATS, HIST_ITEMS, HIST_LEN, ITEM_IDX, PADDING_IDX, TS,
    TS_MS, USER_IDX, require_columns,
)

DAY_MS = 86_400_000
EVENT_DAY = "event_day"        # days since 1970-01-01 (UTC) of an event; internal, never written

_TIMELINE = "_timeline"        # per user: array<struct<ts_ms, event_id, item_idx, cat_idx, brand_idx>>, time-sorted
_KIND = "_kind"                # 0 = impression (a probe), 1 = interaction
_PRECEDING = "_preceding"      # interactions strictly before a probe (k)
_PAYLOAD = "_payload"
_RANK = "_rank"

INTERACTION_COLUMNS = (USER_IDX, ITEM_IDX, CAT_IDX, BRAND_IDX, TS_MS, EVENT_ID)


def epoch_day(date: dt.date) -> int:
    """Days since 1970-01-01 of a calendar date: the `event_day` of its first millisecond."""
    return (date - dt.date(1970, 1, 1)).days


def day_start_ms(date: dt.date) -> int:
    """Epoch milliseconds of a day's 00:00 UTC: the cut-off of the features as of that day."""
    return epoch_day(date) * DAY_MS


def with_event_time(events: DataFrame) -> DataFrame:
    """Add `ts_ms` (epoch ms) and `event_day` (UTC day number) from the `ts` timestamp.

    Integer time avoids any dependence on the session time zone in comparisons and
    day buckets.
    """
    require_columns(events, [TS], "with_event_time")
    return (
        events
        .withColumn(TS_MS, F.unix_millis(F.col(TS)))
        .withColumn(EVENT_DAY, F.floor(F.col(TS_MS) / F.lit(DAY_MS)).cast("int"))
    )


def select_interactions(events: DataFrame, item_categories: DataFrame, event_types: tuple) -> DataFrame:
    """The events that count as interactions, with their item's category and brand.

    Args:
        events: events with `ts_ms` (see `with_event_time`).
        item_categories: `item_idx`, `cat_idx` and optionally `brand_idx` (one row per item).
        event_types: the event types that are interactions (`features.history_event_types`).

    Returns:
        `user_idx`, `item_idx`, `cat_idx`, `brand_idx` (0 when the item has no category or
        brand), `ts_ms`, `event_id`.
    """
    require_columns(events, [USER_IDX, ITEM_IDX, EVENT_TYPE, TS_MS, EVENT_ID], "select_interactions")
    require_columns(item_categories, [ITEM_IDX, CAT_IDX], "select_interactions (catalogue)")
    return (
        events
        .where(F.col(EVENT_TYPE).isin(*event_types))
        .join(item_categories.select(ITEM_IDX, CAT_IDX, brand_column(item_categories)), ITEM_IDX, "left")
        .select(
            USER_IDX,
            ITEM_IDX,
            F.coalesce(F.col(CAT_IDX), F.lit(PADDING_IDX)).alias(CAT_IDX),
            F.coalesce(F.col(BRAND_IDX), F.lit(PADDING_IDX)).alias(BRAND_IDX),
            TS_MS,
            EVENT_ID,
        )
    )


def last_interactions(interactions: DataFrame, count: int, before_ms: int) -> DataFrame:
    """Each user's last `count` interactions strictly before `before_ms`.

    A row_number over each user's rows sorted once: O(n log n) per user, whatever L is.
    """
    newest_first = Window.partitionBy(USER_IDX).orderBy(F.col(TS_MS).desc(), F.col(EVENT_ID).desc())
    return (
        interactions
        .where(F.col(TS_MS) < F.lit(before_ms))
        .withColumn(_RANK, F.row_number().over(newest_first))
        .where(F.col(_RANK) <= count)
        .drop(_RANK)
    )


def sorted_timelines(interactions: DataFrame) -> DataFrame:
    """One row per user: `_timeline`, the interactions sorted by (ts_ms, event_id)."""
    return (
        interactions
        .groupBy(USER_IDX)
        .agg(F.array_sort(F.collect_list(F.struct(TS_MS, EVENT_ID, ITEM_IDX, CAT_IDX, BRAND_IDX))).alias(_TIMELINE))
    )


def history_columns(timeline: Column, preceding: Column, history_length: int) -> list[Column]:
    """`hist_items`, `hist_cats`, `hist_brands`, `hist_len` from the last ≤ L of a timeline's first k entries.

    Args:
        timeline: a time-sorted array of interaction structs (may be null: no interactions).
        preceding: k, how many entries of the timeline come before the point in time.
        history_length: L.
    """
    k = F.coalesce(preceding, F.lit(0)).cast("int")
    length = F.least(k, F.lit(history_length))
    window = F.slice(timeline, k - length + 1, length)  # start is 1-based; k - length + 1 >= 1
    padding = F.array_repeat(F.lit(PADDING_IDX), F.lit(history_length) - length)
    empty = F.array_repeat(F.lit(PADDING_IDX), history_length)

    def padded(field: str) -> Column:
        return F.coalesce(F.concat(padding, F.transform(window, lambda x: x[field])), empty)

    return [
        padded(ITEM_IDX).alias(HIST_ITEMS),
        padded(CAT_IDX).alias(HIST_CATS),
        padded(BRAND_IDX).alias(HIST_BRANDS),
        length.alias(HIST_LEN),
    ]


def build_user_sequences(interactions: DataFrame, history_length: int, cutoff_ms: int) -> DataFrame:
    """Each user's last L interactions strictly before the cut-off.

    Args:
        interactions: `INTERACTION_COLUMNS` (see `select_interactions`).
        history_length: L, the fixed array length.
        cutoff_ms: epoch ms; interactions at or after it are left out.

    Returns:
        One row per user with at least one interaction before the cut-off: `user_idx`,
        `hist_items`, `hist_cats`, `hist_brands` (int32 arrays of length L, most recent last, left-padded
        with 0) and `hist_len`.
    """
    require_columns(interactions, INTERACTION_COLUMNS, "build_user_sequences")
    timelines = sorted_timelines(last_interactions(interactions, history_length, cutoff_ms))
    return timelines.select(USER_IDX, *history_columns(F.col(_TIMELINE), F.size(_TIMELINE), history_length))


def attach_histories(impressions: DataFrame, interactions: DataFrame, history_length: int, since_ms: int) -> DataFrame:
    """Give each impression the user's last L interactions strictly before its timestamp.

    Interactions at exactly the impression's `ts_ms` are not before it and are left out,
    so an impression never sees its own click or anything later.

    Args:
        impressions: rows with `user_idx`, `ts_ms`, `event_id`, all with `ts_ms >= since_ms`;
            every column is kept.
        interactions: `INTERACTION_COLUMNS`; those at or
            after the last impression are simply never counted.
        history_length: L.
        since_ms: a lower bound of the impressions' timestamps. Of the interactions before
            it only the last L per user are kept; after it, all of them.

    Returns:
        The impressions with `hist_items`, `hist_cats`, `hist_brands` (int32, length L, most recent last,
        left-padded with 0) and `hist_len`.
    """
    require_columns(impressions, [USER_IDX, TS_MS, EVENT_ID], "attach_histories (impressions)")
    require_columns(interactions, INTERACTION_COLUMNS, "attach_histories (interactions)")
    timeline_rows = (
        last_interactions(interactions, history_length, since_ms)
        .unionByName(interactions.select(*INTERACTION_COLUMNS).where(F.col(TS_MS) >= F.lit(since_ms)))
    )
    timelines = sorted_timelines(timeline_rows)

    # Impressions and interactions in one time order per user; at equal ts_ms impressions
    # sort first, so the running count of interactions is k = #(interactions before ts).
    # The impression's columns ride along as a struct, which avoids a join back.
    payload_type = T.StructType(impressions.schema.fields)
    marks = (
        impressions
        .select(USER_IDX, TS_MS, EVENT_ID, F.lit(0).alias(_KIND), F.struct(*impressions.columns).alias(_PAYLOAD))
        .unionByName(
            timeline_rows.select(USER_IDX, TS_MS, EVENT_ID, F.lit(1).alias(_KIND),
                                 F.lit(None).cast(payload_type).alias(_PAYLOAD))
        )
    )
    in_time_order = (
        Window.partitionBy(USER_IDX)
        .orderBy(TS_MS, _KIND, EVENT_ID)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    counted = (
        marks
        .withColumn(_PRECEDING, F.sum(_KIND).over(in_time_order))
        .where(F.col(_KIND) == 0)
        .select(f"{_PAYLOAD}.*", _PRECEDING)
    )
    return (
        counted
        .join(timelines, USER_IDX, "left")
        .select(*impressions.columns, *history_columns(F.col(_TIMELINE), F.col(_PRECEDING), history_length))
    )
