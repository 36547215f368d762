"""The Spark part of `recpipe train`: samples + leak-free ALS scores → `ranker_input`,
and the statistics the network is built with (vocabulary sizes, normalisation).

No leakage through the ALS score: `als/dt=a` is trained on events strictly before day
a, so a sample of day d may use the factors of the newest run with a <= d and never a
later one (whose training data holds the sample's own click). Samples with no such run
get 0.0. The dot product uses Spark's built-in higher-order functions (no Python UDF).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from recpipe import io, paths
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.samples import SAMPLE_COLUMNS, SPLITS, TRAIN, write_splits
from recpipe.etl.sequences import DAY_MS, epoch_day
from recpipe.schema import (
    ALS_SCORE,
    BRAND_IDX,
    CAT_IDX,
    DT,
    HIST_BRANDS,
    HIST_CATS,
    HIST_ITEMS,
    ITEM_DENSE,
    ITEM_IDX,
    SPLIT,
    TS_MS,
    USER_DENSE,
    USER_IDX,
    require_columns,
)
from recpipe.splits import parquet_rows, split_location, wide_name

log = logging.getLogger("recpipe.ranker")

ALS_DAY = "_als_day"      # epoch day of the ALS run whose factors score a sample
SAMPLE_DAY = "_sample_day"
FACTORS = "features"      # ALS factor column
FACTOR_TABLES = ("als_user_factors", "als_item_factors")


@dataclass(frozen=True)
class InputStats:
    """What the network is built with, from the TRAIN split of `ranker_input`."""

    rows: dict                # split → rows
    item_vocab: int           # 1 + the largest item index in train (candidates and histories)
    cat_vocab: int
    brand_vocab: int
    user_dense_mean: tuple
    user_dense_std: tuple
    item_dense_mean: tuple
    item_dense_std: tuple
    als_score_mean: float
    als_score_std: float
    als_days: dict            # sample day (ISO) → ALS day used (ISO) or None


# --- which ALS run scores which day --------------------------------------------------

def als_runs(cfg: Config, up_to: dt.date) -> list[dt.date]:
    """Days a with complete ALS factors (`als/dt=a/{user,item}_factors`), a <= up_to."""
    return [day for day in io.partition_days(cfg, "als")
            if day <= up_to and all(io.location(cfg, table, day) for table in FACTOR_TABLES)]


def als_day_for(sample_days: Sequence[dt.date], runs: Sequence[dt.date]) -> dict[dt.date, dt.date | None]:
    """For each sample day d, the newest ALS run a <= d (None when there is none)."""
    ordered = sorted(runs)
    return {d: io.newest_on_or_before(ordered, d) for d in sample_days}


# --- transforms ----------------------------------------------------------------------

def with_als_day(samples: DataFrame, mapping: Mapping[dt.date, dt.date | None]) -> DataFrame:
    """Add `_als_day` (epoch day of the ALS run to use; null = none) from each sample's UTC day."""
    spark = samples.sparkSession
    rows = [(epoch_day(d), epoch_day(a) if a else None) for d, a in mapping.items()]
    days = spark.createDataFrame(rows, f"{SAMPLE_DAY} int, {ALS_DAY} int")
    return (
        samples
        .withColumn(SAMPLE_DAY, F.floor(F.col(TS_MS) / F.lit(DAY_MS)).cast("int"))
        .join(F.broadcast(days), SAMPLE_DAY, "left")
        .drop(SAMPLE_DAY)
    )


def attach_als_scores(samples: DataFrame, user_factors: DataFrame, item_factors: DataFrame) -> DataFrame:
    """Add `als_score` (float32): the dot product of the user's and the item's factors of
    the sample's ALS run; 0.0 when the run, the user or the item has none.

    Args:
        samples: with `user_idx`, `item_idx` and `_als_day` (see `with_als_day`).
        user_factors: `_als_day`, `user_idx`, `features` (array<float>), one row per run and user.
        item_factors: `_als_day`, `item_idx`, `features`.
    """
    require_columns(samples, [USER_IDX, ITEM_IDX, ALS_DAY], "attach_als_scores: samples")
    users = user_factors.select(ALS_DAY, USER_IDX, F.col(FACTORS).alias("_uf"))
    items = item_factors.select(ALS_DAY, ITEM_IDX, F.col(FACTORS).alias("_if"))
    dot = F.aggregate(
        F.zip_with("_uf", "_if", lambda u, i: u.cast("double") * i.cast("double")),
        F.lit(0.0).cast("double"),
        lambda total, x: total + x,
    )
    return (
        samples
        .join(users, [ALS_DAY, USER_IDX], "left")
        .join(items, [ALS_DAY, ITEM_IDX], "left")
        .withColumn(ALS_SCORE, F.coalesce(dot, F.lit(0.0)).cast("float"))
        .drop("_uf", "_if", ALS_DAY)
    )


def fill_dense(samples: DataFrame, user_dim: int, item_dim: int) -> DataFrame:
    """Null dense arrays become zeros of the right length (Petastorm stacks fixed-size arrays)."""
    zeros = lambda n: F.array_repeat(F.lit(0.0).cast("float"), n)  # noqa: E731
    return (
        samples
        .withColumn(USER_DENSE, F.coalesce(F.col(USER_DENSE), zeros(user_dim)))
        .withColumn(ITEM_DENSE, F.coalesce(F.col(ITEM_DENSE), zeros(item_dim)))
    )


def to_wide(frame: DataFrame, widths: Mapping[str, int]) -> DataFrame:
    """Each array column named in `widths` as one scalar column per position
    (`splits.wide_name`), the layout Petastorm reads fast; other columns unchanged."""
    wide = [F.col(name)[j].alias(column) for name in widths for j, column in enumerate(wide_columns(name, widths))]
    return frame.select(*[c for c in frame.columns if c not in widths], *wide)


def array_widths(meta: Mapping) -> dict[str, int]:
    """The length of each array column of D's samples, from their `_meta.json`."""
    length = int(meta["history_length"])
    return {HIST_ITEMS: length, HIST_CATS: length, HIST_BRANDS: length, USER_DENSE: len(meta["user_dense_features"]),
            ITEM_DENSE: len(meta["item_dense_features"])}


def wide_columns(name: str, widths: Mapping[str, int]) -> list[str]:
    """The wide layout's column names of array column `name`, position by position."""
    return [wide_name(name, j) for j in range(widths[name])]


def statistics_columns(widths: Mapping[str, int]) -> list[Column]:
    """The aggregates the network is built with, over the wide train rows: the vocabulary
    sizes' largest item, category and brand index (candidates and histories), the
    als_score moments, and the per-position mean and population std of `user_dense` and
    of `item_dense`. Observed while the train split is written (`DataFrame.observe`), so
    they cost no pass of their own."""
    columns = [F.max(F.greatest(ITEM_IDX, *wide_columns(HIST_ITEMS, widths))).alias("max_item"),
               F.max(F.greatest(CAT_IDX, *wide_columns(HIST_CATS, widths))).alias("max_cat"),
               F.max(F.greatest(BRAND_IDX, *wide_columns(HIST_BRANDS, widths))).alias("max_brand"),
               F.avg(ALS_SCORE).alias("als_mean"), F.stddev_pop(ALS_SCORE).alias("als_std")]
    for name in (USER_DENSE, ITEM_DENSE):
        columns += [F.avg(c).alias(f"mean_{c}") for c in wide_columns(name, widths)]
        columns += [F.stddev_pop(c).alias(f"std_{c}") for c in wide_columns(name, widths)]
    return columns


def train_statistics(row: Mapping[str, Any], widths: Mapping[str, int]) -> tuple[dict[str, float], tuple, tuple]:
    """The vocabulary sizes with the als_score moments, and the dense features' (mean, std)
    per position, from the values of `statistics_columns` (a std of 0 or none counts as 1)."""
    vocab = {
        "item_vocab": int(row["max_item"] or 0) + 1,
        "cat_vocab": int(row["max_cat"] or 0) + 1,
        "brand_vocab": int(row["max_brand"] or 0) + 1,
        "als_mean": float(row["als_mean"] or 0.0),
        "als_std": float(row["als_std"] or 1.0),
    }

    def dense(name: str) -> tuple[tuple, tuple]:
        columns = wide_columns(name, widths)
        return (tuple(float(row[f"mean_{c}"] or 0.0) for c in columns),
                tuple(float(row[f"std_{c}"] or 1.0) for c in columns))

    return vocab, dense(USER_DENSE), dense(ITEM_DENSE)


# --- I/O -----------------------------------------------------------------------------

def read_factors(spark: SparkSession, cfg: Config, runs: Sequence[dt.date], table: str, key: str) -> DataFrame:
    """The factors of several ALS runs, tagged with `_als_day`."""
    frames = [
        io.read_path(spark, io.location(cfg, table, run), f"{table} of {run}")
        .select(F.col(key).cast("int").alias(key), FACTORS)
        .withColumn(ALS_DAY, F.lit(epoch_day(run)))
        for run in runs
    ]
    if not frames:
        return spark.createDataFrame([], f"{key} int, {FACTORS} array<float>, {ALS_DAY} int")
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def write_ranker_input(frame: DataFrame, cfg: Config, date: dt.date, rows: Mapping[str, int], min_files: int,
                       observed: Mapping[str, tuple[Observation, Sequence[Column]]] | None = None) -> None:
    """Write each split of D like the samples: even files (so row groups) per split, none
    above `features.row_group_mb` nor `ranker.input_rows_per_file` rows (a training rank's
    memory follows the size of its row groups); a split without rows has its old folder
    removed. `observed`: aggregates to compute while a split is written (see `write_splits`)."""
    fc = cfg.features
    rows_per_file = min(fc.max_records_per_file, cfg.ranker.input_rows_per_file)
    write_splits(frame, cfg, "ranker_input", date, rows, min_files=min_files,
                 max_records_per_file=rows_per_file, row_group_mb=fc.row_group_mb, observed=observed)


def build_ranker_input(spark: SparkSession, cfg: Config, date: dt.date, meta: Mapping, min_files: int) -> InputStats:
    """Join day D's samples with their ALS scores, write `ranker_input/dt=D`, and compute
    the vocabulary sizes and normalisation statistics from its train split."""
    samples = io.read_day(spark, cfg, "samples", date)
    require_columns(samples, [*SAMPLE_COLUMNS, SPLIT], f"train: samples of {date}")
    user_dim, item_dim = len(meta["user_dense_features"]), len(meta["item_dense_features"])
    first = dt.date.fromisoformat(meta["train_window"][0]) if meta.get("train_window") else date
    sample_days = [first + dt.timedelta(days=i) for i in range((date - first).days + meta.get("eval_days", 1))]
    runs = als_runs(cfg, date)  # none after D: every evaluation row is scored by a model trained before D
    mapping = als_day_for(sample_days, runs)
    used = sorted({a for a in mapping.values() if a is not None})
    log.info("ALS runs used for the samples of %s..%s: %s", sample_days[0], sample_days[-1],
             [a.isoformat() for a in used] or "none")

    scored = (
        samples
        .select(*SAMPLE_COLUMNS, SPLIT)
        .transform(lambda f: with_als_day(f, mapping))
        .transform(lambda f: attach_als_scores(
            f,
            read_factors(spark, cfg, used, "als_user_factors", USER_IDX),
            read_factors(spark, cfg, used, "als_item_factors", ITEM_IDX),
        ))
        .transform(lambda f: fill_dense(f, user_dim, item_dim))
        .withColumn(DT, F.lit(date))
        .transform(lambda f: to_wide(f, array_widths(meta)))
    )
    rows = meta.get("rows") or {r[SPLIT]: int(r["count"]) for r in samples.groupBy(SPLIT).count().collect()}
    if not rows.get(TRAIN):  # checked first: an unwritten split would leave the observation waiting
        raise DataError(f"train: the samples of {date} have no train rows")
    statistics = Observation("train_statistics")
    write_ranker_input(scored, cfg, date, rows, min_files,
                       observed={TRAIN: (statistics, statistics_columns(array_widths(meta)))})

    written = {split: _count(cfg, date, split) for split in SPLITS}  # from the files' footers
    if written[TRAIN] == 0:
        raise DataError(f"train: the samples of {date} have no train rows")
    vocab, (user_mean, user_std), (item_mean, item_std) = train_statistics(statistics.get, array_widths(meta))
    return InputStats(
        rows=written,
        item_vocab=vocab["item_vocab"],
        cat_vocab=vocab["cat_vocab"],
        brand_vocab=vocab["brand_vocab"],
        user_dense_mean=user_mean,
        user_dense_std=user_std,
        item_dense_mean=item_mean,
        item_dense_std=item_std,
        als_score_mean=vocab["als_mean"],
        als_score_std=vocab["als_std"],
        als_days={d.isoformat(): a and a.isoformat() for d, a in mapping.items()},
    )


def _count(cfg: Config, date: dt.date, split: str) -> int:
    location = split_location(cfg, date, split)
    return parquet_rows(location) if paths.exists(location) else 0
