"""Ranker samples: one row per impression, labelled by its click, with the history and
the dense features the ranker may know at that moment, split by time.

Layout of `samples/dt=D/split={train,valid,test}` (Parquet, read by Petastorm):

    event_id    string         the impression's event id
    user_idx    int32
    item_idx    int32          the candidate
    cat_idx     int32          its category (0 = unknown)
    brand_idx   int32          its brand (0 = unknown)
    position    int32          the feed slot it was shown in (0-based; -1 = not logged)
    label       float32        1 if clicked in the same request within the attribution window
    hist_items  int32[L]       last L interactions strictly before the impression, most recent last, 0-padded left
    hist_cats   int32[L]       their categories
    hist_brands int32[L]       their brands
    hist_len    int32          real entries in hist_items (0..L)
    user_dense  float32[U]     user features as of the impression day's cut-off (names in _meta.json)
    item_dense  float32[I]     item features as of the impression day's cut-off (names in _meta.json)
    ts_ms       int64          impression time, epoch ms

`samples/dt=D/_meta.json` records L, the dense feature names, the split rule, the
negative sampling rate and the rows per split.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from recpipe import io, paths, tables
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.sequences import DAY_MS, EVENT_DAY, attach_histories
from recpipe.schema import (
    BRAND_IDX, CAT_IDX, DT, EVENT_ID, EVENT_TYPE, HIST_BRANDS, HIST_CATS, HIST_ITEMS, HIST_LEN, ITEM_DENSE, ITEM_IDX,
    LABEL, PADDING_IDX, POSITION, REQUEST_ID, SPLIT, TS_MS, USER_DENSE, USER_IDX, require_columns,
)
from recpipe.spark import persist

TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
EVAL_SPLITS = ("user_hash", "time", "user_holdout")
META_FILE = "_meta.json"

SAMPLE_COLUMNS = (EVENT_ID, USER_IDX, ITEM_IDX, CAT_IDX, BRAND_IDX, POSITION, LABEL, HIST_ITEMS, HIST_CATS,
                  HIST_BRANDS, HIST_LEN, USER_DENSE, ITEM_DENSE, TS_MS)
UNKNOWN_POSITION = -1

_HASH_BUCKETS = 1_000_000
_CLICK_MS = "_click_ms"       # per (user, request, item): the times of its clicks


def _uniform(*columns: Column) -> Column:
    """A deterministic number in [0, 1) from a hash of the columns: the same on every rerun,
    whatever the partitioning (unlike rand(seed))."""
    return F.pmod(F.xxhash64(*columns), F.lit(_HASH_BUCKETS)) / F.lit(float(_HASH_BUCKETS))


def select_impressions(events: DataFrame, start_ms: int, end_ms: int) -> DataFrame:
    """Impressions with `ts_ms` in [start_ms, end_ms).

    Returns:
        `event_id`, `user_idx`, `item_idx`, `request_id`, `position` (-1 where the log has
        none), `ts_ms`, `event_day`.
    """
    require_columns(events, [EVENT_ID, USER_IDX, ITEM_IDX, EVENT_TYPE, REQUEST_ID, TS_MS, EVENT_DAY],
                    "select_impressions")
    position = (F.coalesce(F.col(POSITION).cast("int"), F.lit(UNKNOWN_POSITION)) if POSITION in events.columns
                else F.lit(UNKNOWN_POSITION))
    return (
        events
        .where(F.col(EVENT_TYPE) == "impression")
        .where(F.col(TS_MS).between(start_ms, end_ms - 1))
        .select(EVENT_ID, USER_IDX, ITEM_IDX, REQUEST_ID, position.alias(POSITION), TS_MS, EVENT_DAY)
    )


def label_impressions(impressions: DataFrame, events: DataFrame, attribution_minutes: int) -> DataFrame:
    """Add `label`: 1.0 when the user clicked the same item in the same request within
    `attribution_minutes` at or after the impression, else 0.0.

    A click in another request, on another item, or later than the window does not count.
    Clicks are gathered per (user, request, item), a handful at most, so the impressions
    need a single join on that key and no join back.
    """
    require_columns(impressions, [USER_IDX, ITEM_IDX, REQUEST_ID, TS_MS], "label_impressions")
    window_ms = attribution_minutes * 60_000
    key = [USER_IDX, REQUEST_ID, ITEM_IDX]
    clicks = (
        events
        .where((F.col(EVENT_TYPE) == "click") & F.col(REQUEST_ID).isNotNull())
        .groupBy(*key)
        .agg(F.collect_list(TS_MS).alias(_CLICK_MS))
    )
    shown = F.col(TS_MS)
    attributed = F.exists(F.col(_CLICK_MS), lambda click: (click >= shown) & (click <= shown + window_ms))
    return (
        impressions
        .join(clicks, key, "left")
        .withColumn(LABEL, F.coalesce(attributed, F.lit(False)).cast("float"))
        .drop(_CLICK_MS)
    )


def assign_splits(labelled: DataFrame, cutoff_ms: int, eval_split: str, valid_share: float, seed: int,
                  eval_end_ms: int | None = None, holdout_share: float = 0.0) -> DataFrame:
    """Add `split`: train, valid or test.

    Args:
        labelled: impressions of the train window and of the evaluation days, with `user_idx`, `ts_ms`.
        cutoff_ms: D 00:00 UTC in epoch ms.
        eval_split: how rows split, by time unless `user_holdout`:
            `user_hash`: before the cut-off is train; on the evaluation days a seeded hash of
            user_idx below `valid_share` is valid, the rest test (a user's evaluation rows are
            never split between valid and test);
            `time`: before the cut-off is train; the first `valid_share` of the evaluation
            days is valid, the rest test;
            `user_holdout` (the DIN paper's MovieLens protocol): a seeded hash of user_idx
            below `holdout_share` holds the user out, and all of a held-out user's rows, at
            any time, evaluate (valid or test by the `user_hash` rule); every other user's
            rows train. Training then sees days after some evaluation rows, never the
            held-out users.
        valid_share: share of the evaluation days (users or time) in valid.
        seed: hash seed.
        eval_end_ms: end of the evaluation days; default one day after the cut-off.
        holdout_share: share of users held out, for `user_holdout` only.
    """
    eval_ms = (eval_end_ms if eval_end_ms is not None else cutoff_ms + DAY_MS) - cutoff_ms
    by_user = _uniform(F.lit("valid"), F.col(USER_IDX), F.lit(seed)) < valid_share
    if eval_split == "user_hash":
        to_train, to_valid = F.col(TS_MS) < cutoff_ms, by_user
    elif eval_split == "time":
        to_train, to_valid = F.col(TS_MS) < cutoff_ms, F.col(TS_MS) < F.lit(cutoff_ms + int(valid_share * eval_ms))
    elif eval_split == "user_holdout":
        to_train = _uniform(F.lit("holdout"), F.col(USER_IDX), F.lit(seed)) >= holdout_share
        to_valid = by_user
    else:
        raise ValueError(f"unknown eval_split {eval_split!r}; expected one of {EVAL_SPLITS}")
    return labelled.withColumn(
        SPLIT,
        F.when(to_train, F.lit(TRAIN)).when(to_valid, F.lit(VALID)).otherwise(F.lit(TEST)),
    )


def downsample_negatives(samples: DataFrame, rate: float, seed: int) -> DataFrame:
    """Keep every positive and a seeded, deterministic `rate` share of the train negatives.

    Valid and test keep all their rows: they are evaluated at the true click rate.
    """
    if rate >= 1.0:
        return samples
    keep = (
        (F.col(SPLIT) != TRAIN)
        | (F.col(LABEL) > 0)
        | (_uniform(F.lit("negatives"), F.col(EVENT_ID), F.lit(seed)) < rate)
    )
    return samples.where(keep)


def build_samples(impressions: DataFrame, events: DataFrame, interactions: DataFrame, user_dense: DataFrame,
                  item_dense: DataFrame, item_categories: DataFrame, *, date: dt.date, train_start_ms: int,
                  cutoff_ms: int, eval_end_ms: int, history_length: int, attribution_minutes: int, eval_split: str,
                  valid_share: float, negative_sampling_rate: float, seed: int,
                  holdout_share: float = 0.0) -> DataFrame:
    """The ranker samples of the train window and of the evaluation days from D on.

    Args:
        impressions: `select_impressions` over [train_start_ms, eval_end_ms).
        events: events with `ts_ms` from the train window's start to the attribution window after
            day D: the clicks that label the impressions.
        interactions: `select_interactions` before the end of day D.
        user_dense: `user_idx`, `event_day`, `user_dense` for every impression's (user, day).
        item_dense: `item_idx`, `event_day`, `item_dense` for every impression's (item, day).
        item_categories: `item_idx`, `cat_idx`, `brand_idx`.
        date: D, written as the `dt` column.

    Returns:
        `SAMPLE_COLUMNS` plus `dt` and `split`.
    """
    kept = (
        label_impressions(impressions, events, attribution_minutes)
        .transform(lambda f: assign_splits(f, cutoff_ms, eval_split, valid_share, seed, eval_end_ms, holdout_share))
        .transform(lambda f: downsample_negatives(f, negative_sampling_rate, seed))
    )
    return (
        attach_histories(kept, interactions, history_length=history_length, since_ms=train_start_ms)
        .join(user_dense, [USER_IDX, EVENT_DAY], "left")
        .join(item_dense, [ITEM_IDX, EVENT_DAY], "left")
        .join(item_categories, ITEM_IDX, "left")
        .select(
            F.col(EVENT_ID),
            F.col(USER_IDX).cast("int"),
            F.col(ITEM_IDX).cast("int"),
            F.coalesce(F.col(CAT_IDX), F.lit(PADDING_IDX)).cast("int").alias(CAT_IDX),
            F.coalesce(F.col(BRAND_IDX), F.lit(PADDING_IDX)).cast("int").alias(BRAND_IDX),
            F.col(POSITION).cast("int"),
            F.col(LABEL).cast("float"),
            HIST_ITEMS,
            HIST_CATS,
            HIST_BRANDS,
            HIST_LEN,
            USER_DENSE,
            ITEM_DENSE,
            F.col(TS_MS).cast("long"),
            F.lit(date).alias(DT),
            SPLIT,
        )
    )


def files_for(rows: int, min_files: int, max_records_per_file: int) -> int:
    """Files for a split: at least `min_files` (never more than rows), and enough that none
    holds more than `max_records_per_file` rows."""
    return max(min(min_files, rows), math.ceil(rows / max_records_per_file), 1)


def write_samples(samples: DataFrame, cfg: Config, date: dt.date, rows_per_split: Mapping[str, int],
                  min_files: int, max_records_per_file: int, row_group_mb: int) -> dict[str, int]:
    """Write each split of day D (`dt=D/split=<s>`) into a new version of the table; return
    files per split.

    Rows are dealt round-robin into `files_for(...)` tasks, so a split gets exactly that
    many files of even size: many more Parquet row groups than training ranks even on
    small data (Petastorm shards by row group), none larger than `row_group_mb`.
    A split with no rows is simply absent from the new version.
    """
    return write_splits(samples, cfg, "samples", date, rows_per_split, min_files=min_files,
                        max_records_per_file=max_records_per_file, row_group_mb=row_group_mb)


def write_counted_splits(samples: DataFrame, cfg: Config, date: dt.date
                         ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Count the samples per split, then write the splits of day D (`write_samples`).

    The samples are persisted for the duration: the counts decide the number of files of
    each split, and each split is then written from the same rows.

    Returns:
        Rows, positives and files per split.
    """
    fc = cfg.features
    samples = persist(samples, cfg)
    try:
        counts = samples.groupBy(SPLIT).agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("positives")).collect()
        rows = {split: 0 for split in SPLITS} | {r[SPLIT]: int(r["rows"]) for r in counts}
        positives = {split: 0 for split in SPLITS} | {r[SPLIT]: int(r["positives"] or 0) for r in counts}
        files = write_samples(samples, cfg, date, rows, min_files=fc.min_files_per_split,
                              max_records_per_file=fc.max_records_per_file, row_group_mb=fc.row_group_mb)
    finally:
        samples.unpersist()
    return rows, positives, files


def write_splits(frame: DataFrame, cfg: Config, name: str, date: dt.date, rows_per_split: Mapping[str, int], *,
                 min_files: int, max_records_per_file: int, row_group_mb: int,
                 observed: Mapping[str, tuple[Observation, Sequence[Column]]] | None = None) -> dict[str, int]:
    """Write the splits of day D of table `name` (columns `dt` and `split`), each in
    `files_for(...)` even files, as one new version; returns files per split.

    `observed`: split → (Observation, aggregate columns) computed over that split's rows
    while it is written (`DataFrame.observe`: no pass of their own)."""
    files = {split: files_for(rows_per_split.get(split, 0), min_files, max_records_per_file)
             if rows_per_split.get(split, 0) else 0 for split in SPLITS}
    observed = observed or {}
    with tables.committing(cfg, f"write {name}") as commit:
        for split in (s for s in SPLITS if files[s]):
            rows = frame.where(F.col(SPLIT) == split)
            if split in observed:
                rows = rows.observe(observed[split][0], *observed[split][1])
            (
                rows
                .repartition(files[split])
                .write
                .mode("overwrite")  # dynamic: replaces this split's folder only, in this new version
                .option("maxRecordsPerFile", max_records_per_file)
                .option("parquet.block.size", row_group_mb * 1024 * 1024)
                .partitionBy(DT, SPLIT)
                .parquet(commit.version_root(name))
            )
        commit.wrote(name, [date])
    return files


def write_meta(cfg: Config, date: dt.date, meta: Mapping) -> str:
    """Write `_meta.json` beside the splits of day D (Spark and Petastorm skip `_` files)."""
    return io.write_file(cfg, "samples", date, META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())


def read_meta(cfg: Config, date: dt.date) -> dict:
    """The `_meta.json` of day D's samples."""
    location = io.location(cfg, "samples", date)
    if location is None:
        raise DataError(f"no samples for {date} at {cfg.table_path('samples', date)}; run `recpipe features` first")
    return json.loads(paths.read_bytes(paths.join_uri(location, META_FILE)))
