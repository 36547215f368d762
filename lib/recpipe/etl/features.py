"""The features stage: point-in-time user and item features, behaviour sequences and
leak-free ranker samples, all as of day D (cut-off D 00:00 UTC).

Inputs are the clean events (selected by `ts`, never by `dt`: late events of a day arrive
in the next day's file) and the newest catalogue snapshot on or before each day.
Only partitions `dt <= D` are read, so D's outputs depend on nothing written after D's
clean ran and a rerun or backfill of D reproduces them exactly.

Dense features are computed in one pass for every day they are needed (day D for the
tables, each impression's day for the samples): events are first reduced to one row per
(user, day) and (item, day), then a range window over the day number sums the days
[d - w, d - 1] for each probe row (entity, d). No job per day, and the window work per
entity is bounded by its active days, not by its events.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Iterable

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recpipe import io, paths
from recpipe.config import Config, FeaturesConfig
from recpipe.errors import ConfigError, DataError
from recpipe.etl import samples as S
from recpipe.etl.sequences import (
    DAY_MS, EVENT_DAY, build_user_sequences, day_start_ms, epoch_day, select_interactions, with_event_time,
)
from recpipe.schema import (
    CAT_IDX, DT, EVENT_ID, EVENT_TYPE, EVENT_TYPES, FAV_CATS, ITEM_DENSE, ITEM_IDX, LABEL, PADDING_IDX, PRICE,
    RECENCY_DAYS, REQUEST_ID, SPLIT, TS, TS_MS, USER_DENSE, USER_IDX, require_columns,
)

log = logging.getLogger("recpipe.features")

EVENT_COLUMNS = (EVENT_ID, USER_IDX, ITEM_IDX, EVENT_TYPE, TS, REQUEST_ID)
CATALOGUE_COLUMNS = (ITEM_IDX, CAT_IDX, PRICE)

_LAST_MS = "_last_interaction_ms"
_PROBE = "_probe"
_FROM_DAY, _TO_DAY = "_from_day", "_to_day"   # the epoch days a catalogue snapshot applies to
_SPAN_ITEM = "_span_item_idx"


# --- names ---------------------------------------------------------------------------

def count_name(event_type: str, days: int) -> str:
    """Column of the number of `event_type` events in the `days` days before the cut-off."""
    return f"{event_type}_{days}d"


def ctr_name(days: int) -> str:
    return f"ctr_{days}d"


def activity_names(windows_days: Iterable[int]) -> list[str]:
    """Counts (every event type, every window) then CTR per window, in a fixed order."""
    windows = list(windows_days)
    return [count_name(t, w) for w in windows for t in EVENT_TYPES] + [ctr_name(w) for w in windows]


def user_dense_names(windows_days: Iterable[int]) -> list[str]:
    """Names of the `user_dense` entries, in order (recorded in the samples' _meta.json)."""
    return [_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{RECENCY_DAYS}"]


def item_dense_names(windows_days: Iterable[int]) -> list[str]:
    """Names of the `item_dense` entries, in order (recorded in the samples' _meta.json)."""
    return [_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{PRICE}"]


def _dense_name(column: str) -> str:
    return column if column.startswith("ctr_") else f"log1p_{column}"


# --- transforms ----------------------------------------------------------------------

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
    in_span = (F.col(ITEM_IDX) == F.col(_SPAN_ITEM)) & F.col(EVENT_DAY).between(F.col(_FROM_DAY), F.col(_TO_DAY))
    return frame.join(spans, in_span, "left").drop(_SPAN_ITEM, _FROM_DAY, _TO_DAY)


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


# --- I/O -----------------------------------------------------------------------------

def read_events(spark: SparkSession, cfg: Config, first_day: dt.date, date: dt.date, until_ms: int) -> DataFrame:
    """Events with `ts` in [first_day 00:00, until_ms) from the partitions dt first_day..date.

    An event is in its own day's file or, late, in the next one's, so no partition before
    `first_day` can hold a wanted event. Partitions after `date` are not read, so that the
    outputs for `date` never change once they are written.
    """
    events = io.read_days(spark, cfg, "events", first_day, date)
    require_columns(events, EVENT_COLUMNS, "features: events table")
    since = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.timezone.utc)
    until = dt.datetime.fromtimestamp(until_ms / 1000, tz=dt.timezone.utc)
    return (
        events
        .where((F.col(TS) >= F.lit(since)) & (F.col(TS) < F.lit(until)))
        .select(*EVENT_COLUMNS)
        .transform(with_event_time)
    )


def read_catalogue_days(spark: SparkSession, cfg: Config, days: list[dt.date]) -> DataFrame:
    """The catalogue snapshot that applies to each of `days`: the newest one on or before it.

    Returns:
        One row per item and snapshot: `item_idx`, `cat_idx`, `price` and the span of
        epoch days it applies to, `_from_day`..`_to_day` (spans, not a row per day: a
        whole history is thousands of days); days before the first snapshot are absent.

    Raises:
        DataError: when no snapshot exists on or before the last day.
    """
    snapshots = io.partition_days(cfg, "catalogue")
    snapshot_of = {day: io.newest_on_or_before(snapshots, day) for day in days}
    if snapshot_of[max(days)] is None:
        raise DataError(f"table 'catalogue' has no snapshot on or before {max(days)} at {cfg.table_path('catalogue')}")
    frames = []
    for snapshot in sorted({s for s in snapshot_of.values() if s is not None}):
        covered = [epoch_day(day) for day, s in snapshot_of.items() if s == snapshot]  # consecutive days
        catalogue = io.read_day(spark, cfg, "catalogue", snapshot)
        require_columns(catalogue, CATALOGUE_COLUMNS, f"features: catalogue snapshot {snapshot}")
        frames.append(
            catalogue
            .select(ITEM_IDX, CAT_IDX, F.col(PRICE).cast("double").alias(PRICE),
                    F.lit(min(covered)).alias(_FROM_DAY), F.lit(max(covered)).alias(_TO_DAY))
        )
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def read_item_categories(spark: SparkSession, cfg: Config, date: dt.date) -> DataFrame:
    """`item_idx`, `cat_idx` of the newest catalogue snapshot on or before `date`."""
    snapshot = io.latest_day(cfg, "catalogue", date)
    if snapshot is None:
        raise DataError(f"table 'catalogue' has no snapshot on or before {date} at {cfg.table_path('catalogue')}")
    return io.read_day(spark, cfg, "catalogue", snapshot).select(ITEM_IDX, CAT_IDX)


def write_table(frame: DataFrame, cfg: Config, name: str, date: dt.date, files: int) -> int:
    """Write one day of a table (replacing only that day) and return its row count.

    The first day of a data set has nothing before its cut-off: the day is then absent.
    """
    io.write_day(frame, cfg, name, date, files)
    location = cfg.table_path(name, date)
    return count_rows(location) if paths.exists(location) else 0


def count_rows(location: str) -> int:
    """Rows of a written Parquet folder, from the file footers alone (no Spark job)."""
    import pyarrow.dataset as pads

    fs, path = paths.filesystem_for(location)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


# --- the stage -----------------------------------------------------------------------

def check_config(fc: FeaturesConfig) -> None:
    """Raise ConfigError naming the `features.*` key whose value cannot work."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"features.{key}: {why}")

    if fc.history_length < 1:
        raise bad("history_length", "must be at least 1")
    unknown = set(fc.history_event_types) - set(EVENT_TYPES)
    if unknown or "impression" in fc.history_event_types or not fc.history_event_types:
        raise bad("history_event_types",
                  f"must be a non-empty subset of {EVENT_TYPES[1:]}, got {fc.history_event_types}")
    if not fc.windows_days or any(not isinstance(w, int) or w < 1 for w in fc.windows_days):
        raise bad("windows_days", "must be a non-empty list of positive whole days")
    if len(set(fc.windows_days)) != len(fc.windows_days):
        raise bad("windows_days", "has a repeated window")
    if fc.lookback_days < 1:
        raise bad("lookback_days", "must be at least 1")
    if fc.top_categories < 1:
        raise bad("top_categories", "must be at least 1")
    if fc.train_days < 0:
        raise bad("train_days", "must not be negative")
    if fc.eval_split not in S.EVAL_SPLITS:
        raise bad("eval_split", f"must be one of {', '.join(S.EVAL_SPLITS)}, got {fc.eval_split!r}")
    if not 0.0 <= fc.valid_share <= 1.0:
        raise bad("valid_share", "must be between 0 and 1")
    if not 0.0 <= fc.holdout_share < 1.0:
        raise bad("holdout_share", "must be at least 0 and below 1 (someone must train)")
    if not 0.0 < fc.negative_sampling_rate <= 1.0:
        raise bad("negative_sampling_rate", "must be in (0, 1]")
    for key in ("row_group_mb", "max_records_per_file", "min_files_per_split", "files_per_day", "attribution_minutes"):
        if getattr(fc, key) < 1:
            raise bad(key, "must be at least 1")


def check_eval_days(days: int) -> int:
    if days < 1:
        raise ConfigError(f"evaluation.days must be at least 1, got {days}")
    return days


def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Build the features, sequences and ranker samples as of `date` and write them.

    Returns:
        Rows written per output (`user_features`, `item_features`, `sequences`) and per
        samples split (`samples`: {train, valid, test}).
    """
    fc = cfg.features
    check_config(fc)
    eval_days = check_eval_days(cfg.evaluation.days)
    windows = tuple(fc.windows_days)
    cutoff_day, cutoff_ms = epoch_day(date), day_start_ms(date)
    eval_end_ms = cutoff_ms + eval_days * DAY_MS  # valid/test: [D, D + evaluation.days)
    train_start = date - dt.timedelta(days=fc.train_days)
    sample_days = [train_start + dt.timedelta(days=i) for i in range(fc.train_days + eval_days)]
    # Events back to the lookback (or the longest window) before the first sample day, and
    # after the evaluation days as far as the attribution window of their last impressions.
    first_day = train_start - dt.timedelta(days=max(fc.lookback_days, max(windows)))
    events = read_events(spark, cfg, first_day, sample_days[-1],
                         until_ms=eval_end_ms + fc.attribution_minutes * 60_000)
    catalogue_days = read_catalogue_days(spark, cfg, sample_days)
    # Categories come from D's snapshot for candidates and histories alike, so that the
    # attention compares like with like; prices follow each day's snapshot.
    item_categories = read_item_categories(spark, cfg, date)

    interactions = select_interactions(
        events.where(F.col(TS_MS) < eval_end_ms), item_categories, fc.history_event_types)
    impressions = S.select_impressions(events, day_start_ms(train_start), eval_end_ms)
    # Features are never asked as of a day after D, so day D's own activity is never summed.
    before_cutoff = events.where(F.col(TS_MS) < cutoff_ms)
    daily_users = daily_activity(before_cutoff, USER_IDX, fc.history_event_types)
    daily_items = daily_activity(before_cutoff, ITEM_IDX, fc.history_event_types)
    user_targets = active_before(daily_users, USER_IDX, cutoff_day, fc.lookback_days)
    item_targets = (
        active_before(daily_items, ITEM_IDX, cutoff_day, fc.lookback_days)
        .unionByName(item_categories.select(ITEM_IDX).withColumn(EVENT_DAY, F.lit(cutoff_day)))
    )

    # One window pass each serves day D (the tables) and every impression's day (the
    # samples); persisted because both read them.
    user_asof = user_features_as_of(
        daily_users,
        user_targets.unionByName(impressions.select(USER_IDX, EVENT_DAY)).distinct(),
        windows,
        fc.lookback_days,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    item_asof = item_features_as_of(
        daily_items,
        item_targets.unionByName(impressions.select(ITEM_IDX, EVENT_DAY)).distinct(),
        catalogue_days,
        windows,
        fc.lookback_days,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        favourites = favourite_categories(interactions, cutoff_ms, max(windows), fc.top_categories)
        users = build_user_features(user_asof, user_targets, favourites, cutoff_day, windows, fc.top_categories)
        sequences = build_user_sequences(interactions, history_length=fc.history_length, cutoff_ms=cutoff_ms)
        summary = {
            "user_features": write_table(users, cfg, "user_features", date, fc.files_per_day),
            "item_features": write_table(build_item_features(item_asof, cutoff_day, windows), cfg, "item_features",
                                         date, fc.files_per_day),
            "sequences": write_table(sequences, cfg, "sequences", date, fc.files_per_day),
        }
        samples = S.build_samples(
            impressions,
            events.where(F.col(TS_MS) >= day_start_ms(train_start)),  # clicks that can label an impression
            interactions,
            user_asof.select(USER_IDX, EVENT_DAY, USER_DENSE),
            item_asof.select(ITEM_IDX, EVENT_DAY, ITEM_DENSE),
            item_categories,
            date=date,
            train_start_ms=day_start_ms(train_start),
            cutoff_ms=cutoff_ms,
            eval_end_ms=eval_end_ms,
            history_length=fc.history_length,
            attribution_minutes=fc.attribution_minutes,
            eval_split=fc.eval_split,
            valid_share=fc.valid_share,
            holdout_share=fc.holdout_share,
            negative_sampling_rate=fc.negative_sampling_rate,
            seed=fc.sampling_seed,
        )
        summary["samples"] = write_samples_and_meta(samples, cfg, date, windows)
    finally:
        user_asof.unpersist()
        item_asof.unpersist()
    log.info("features as of %s: %s", date, summary)
    return summary


def write_samples_and_meta(samples: DataFrame, cfg: Config, date: dt.date, windows: tuple) -> dict[str, int]:
    """Count the samples per split, write the splits, then `_meta.json` beside them.

    The samples are persisted for the duration: the counts decide the number of files of
    each split, and each split is then written from the same rows.

    Returns:
        Rows per split.
    """
    fc = cfg.features
    samples = samples.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = (
            samples
            .groupBy(SPLIT)
            .agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("positives"))
            .collect()
        )
        rows = {split: 0 for split in S.SPLITS} | {r[SPLIT]: int(r["rows"]) for r in counts}
        positives = {split: 0 for split in S.SPLITS} | {r[SPLIT]: int(r["positives"] or 0) for r in counts}
        files = S.write_samples(samples, cfg, date, rows, min_files=fc.min_files_per_split,
                                max_records_per_file=fc.max_records_per_file, row_group_mb=fc.row_group_mb)
        columns = {f.name: f.dataType.simpleString() for f in samples.schema.fields if f.name not in (DT, SPLIT)}
    finally:
        samples.unpersist()
    S.write_meta(cfg, date, {
        "date": date.isoformat(),
        "columns": columns,
        # Petastorm's torch DataLoader refuses string columns: read with schema_fields=these.
        "tensor_columns": [name for name in S.SAMPLE_COLUMNS if name != EVENT_ID],
        "history_length": fc.history_length,
        "history_event_types": list(fc.history_event_types),
        "user_dense_features": user_dense_names(windows),
        "item_dense_features": item_dense_names(windows),
        "attribution_minutes": fc.attribution_minutes,
        # [first day, D]: train is the days before D, valid/test the evaluation days from D on.
        "train_window": [(date - dt.timedelta(days=fc.train_days)).isoformat(), date.isoformat()],
        "eval_days": cfg.evaluation.days,
        "eval_split": fc.eval_split,
        "valid_share": fc.valid_share,
        "holdout_share": fc.holdout_share,
        "negative_sampling_rate": fc.negative_sampling_rate,
        "sampling_seed": fc.sampling_seed,
        "rows": rows,
        "positives": positives,
        "files": files,
        "row_group_mb": fc.row_group_mb,
    })
    return rows
