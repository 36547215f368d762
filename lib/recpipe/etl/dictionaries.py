"""Append-only id dictionaries: string ids to dense int indexes that never change.

Each dictionary is a snapshot table (`dt=D` holds the whole dictionary as of day D:
id, index, first_seen). A run reads the newest snapshot, keeps every index in it and
numbers unseen ids after the largest one, in id order, so the same input always gets
the same indexes. Index 0 (`schema.PADDING_IDX`) is never assigned: it means padding
or unknown downstream. How a day older than the newest snapshot is handled (nothing is
numbered) is `recpipe.etl.clean.update_dictionaries`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe import io, paths
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.rejects import BLANK
from recpipe.schema import (
    BRAND, BRAND_IDX, CAT_IDX, CATEGORY, FIRST_SEEN, ITEM_ID, ITEM_IDX, PADDING_IDX, USER_ID, USER_IDX,
)

_TOP = "_top"
_POSITION = "_position"
_AT = "_at"
NEWEST = dt.date.max  # `as_of` that finds the newest snapshot, whatever its day


@dataclass(frozen=True)
class DictionarySpec:
    """Where a dictionary lives (`tables:` name) and what its columns are called."""

    table: str
    key: str
    index: str

    @property
    def schema(self) -> T.StructType:
        return T.StructType([
            T.StructField(self.key, T.StringType(), False),
            T.StructField(self.index, T.IntegerType(), False),
            T.StructField(FIRST_SEEN, T.DateType(), False),
        ])


USERS = DictionarySpec("dim_users", USER_ID, USER_IDX)
ITEMS = DictionarySpec("dim_items", ITEM_ID, ITEM_IDX)
CATEGORIES = DictionarySpec("dim_categories", CATEGORY, CAT_IDX)
BRANDS = DictionarySpec("dim_brands", BRAND, BRAND_IDX)


class DictionaryError(DataError):
    """A dictionary snapshot breaks its invariants; the message names the table, the day and
    the first bad id. Numbering anything from it would silently re-map ids."""


def read_newest_snapshot(spark: SparkSession, cfg: Config, spec: DictionarySpec) -> tuple[DataFrame, dt.date | None]:
    """The newest snapshot of a dictionary (any day) and its day; empty and None if none.

    The snapshot is checked (dense, unique) and so is that it extends the one before it:
    this is the snapshot new ids are numbered after.
    """
    newest = io.latest_day(cfg, spec.table, NEWEST)
    if newest is None:
        return spark.createDataFrame([], spec.schema), None
    snapshot = read_snapshot(spark, cfg, spec, newest)
    check_extends_previous(spark, cfg, spec, snapshot, newest)
    return snapshot, newest


def read_snapshot(spark: SparkSession, cfg: Config, spec: DictionarySpec, day: dt.date, *,
                  check: bool = True) -> DataFrame:
    """One day's snapshot of a dictionary (`key`, `index`, `first_seen`), checked dense from
    1 and unique both ways (DictionaryError otherwise). `check=False` is for a snapshot this
    job has just checked and written."""
    # The schema is known: giving it spares Spark a job that reads Parquet footers.
    snapshot = spark.read.schema(spec.schema).parquet(snapshot_location(cfg, spec, day))
    if check:
        check_snapshot(snapshot, spec, day)
    return snapshot


def snapshot_location(cfg: Config, spec: DictionarySpec, day: dt.date) -> str:
    """The committed folder of one day's snapshot; DictionaryError when the table's pointer
    names it but its files are gone (a manual delete, a partial restore)."""
    location = io.location(cfg, spec.table, day)
    if location is None or not paths.exists(location):
        raise DictionaryError(f"{spec.table} dt={day}: the committed snapshot {location or cfg.table_path(spec.table, day)} "
                              "is missing; restore it: numbering ids without it would renumber them")
    return location


def check_snapshot(snapshot: DataFrame, spec: DictionarySpec, day: dt.date) -> None:
    """DictionaryError unless the snapshot's indexes are 1..n, one per id and one id per index.

    One aggregate when the snapshot is sound; the first bad id is looked for only when not.
    """
    stats = snapshot_stats(snapshot, spec, day)
    if stats["rows"] == 0:
        raise DictionaryError(f"{spec.table} dt={day}: the snapshot is empty, but a dictionary only grows; restore it "
                              f"(or remove the folder and clean the days from {day} on again)")
    require_dense(snapshot, spec, day, stats)


def snapshot_stats(snapshot: DataFrame, spec: DictionarySpec, day: dt.date) -> Row:
    """One aggregate over a snapshot: `rows`, distinct `keys` and `indexes`, `low` and `high`
    index, `nulls` (rows without id or index) and `new` (ids first seen on `day`)."""
    key, index = F.col(spec.key), F.col(spec.index)
    return snapshot.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(key).alias("keys"),
        F.countDistinct(index).alias("indexes"),
        F.min(index).alias("low"),
        F.max(index).alias("high"),
        F.count(F.when(key.isNull() | index.isNull(), 1)).alias("nulls"),
        F.count(F.when(F.col(FIRST_SEEN) == F.lit(day), 1)).alias("new"),
    ).first()


def require_dense(snapshot: DataFrame, spec: DictionarySpec, day: dt.date, stats: Row) -> None:
    """DictionaryError unless `stats` (the snapshot's, from `snapshot_stats`) say its indexes
    are 1..n, one per id and one id per index; the error names the first bad id."""
    if stats["nulls"] == 0 and stats["rows"] == stats["keys"] == stats["indexes"] == stats["high"] and stats["low"] == 1:
        return
    raise DictionaryError(f"{spec.table} dt={day}: {first_violation(snapshot, spec)}; every later join on {spec.index} "
                          "would be wrong, so nothing is numbered or read from it")


def first_violation(snapshot: DataFrame, spec: DictionarySpec) -> str:
    """The first id (in index order) at which the snapshot stops being dense and unique."""
    key, index = spec.key, spec.index
    if (row := snapshot.where(F.col(key).isNull() | F.col(index).isNull()).first()) is not None:
        return f"a row without id or index ({key}={row[key]!r}, {index}={row[index]})"
    shared = snapshot.groupBy(index).agg(F.count(F.lit(1)).alias("n"), F.sort_array(F.collect_set(key)).alias("ids"))
    if (row := shared.where(F.col("n") > 1).orderBy(index).first()) is not None:
        return f"index {row[index]} is given to {row['n']} ids ({', '.join(row['ids'][:3])})"
    twice = snapshot.groupBy(key).agg(F.count(F.lit(1)).alias("n"), F.sort_array(F.collect_set(index)).alias("at"))
    if (row := twice.where(F.col("n") > 1).orderBy(key).first()) is not None:
        return f"id {row[key]!r} has {row['n']} indexes ({', '.join(map(str, row['at'][:3]))})"
    if (row := snapshot.where(F.col(index) < 1).orderBy(index).first()) is not None:
        return f"id {row[key]!r} has index {row[index]}, below 1 ({PADDING_IDX} is padding, no id's)"
    # Unique both ways and from 1 up, so what is left is a gap: the smallest index that no id
    # has, found with a join rather than by ranking every row in one task.
    missing = first_missing_index(snapshot.select(F.col(index).alias(_AT)))
    row = snapshot.where(F.col(index) > missing).orderBy(index).first()
    return f"indexes are not dense from 1: {missing} is missing (the next is {row[index]}, id {row[key]!r})"


def first_missing_index(indexes: DataFrame) -> int:
    """The smallest integer from 1 up that is not in `indexes[_AT]` (all of them >= 1): it is
    1 or the successor of some index, so only those are candidates."""
    one = indexes.sparkSession.range(1).select(F.lit(1).alias(_AT))
    candidates = indexes.select((F.col(_AT) + 1).alias(_AT)).unionByName(one)
    return candidates.join(indexes, _AT, "left_anti").agg(F.min(_AT)).first()[0]


def check_extends_previous(spark: SparkSession, cfg: Config, spec: DictionarySpec, snapshot: DataFrame,
                           day: dt.date) -> None:
    """DictionaryError unless `snapshot` (day `day`) holds every id of the snapshot before it
    with the same index."""
    previous_day = io.latest_day(cfg, spec.table, day - dt.timedelta(days=1))
    if previous_day is None:
        return
    previous = spark.read.schema(spec.schema).parquet(snapshot_location(cfg, spec, previous_day))
    now = snapshot.select(spec.key, F.col(spec.index).alias("_now"))
    lost = previous.join(now, spec.key, "left").where(F.col("_now").isNull() | (F.col("_now") != F.col(spec.index)))
    row = lost.orderBy(spec.key).first()
    if row is None:
        return
    what = (f"lacks id {row[spec.key]!r}" if row["_now"] is None else
            f"gives id {row[spec.key]!r} index {row['_now']}")
    raise DictionaryError(f"{spec.table} dt={day}: {what} (index {row[spec.index]} on dt={previous_day}); each "
                          "snapshot must hold every id of the one before with the same index")


def unseen_ids(existing: DataFrame, ids: DataFrame, *, key: str) -> DataFrame:
    """Distinct non-blank values of `ids[key]` that `existing` does not hold yet."""
    candidates = ids.select(key).where(F.col(key).isNotNull() & ~F.col(key).rlike(BLANK)).distinct()
    return candidates.join(existing.select(key), key, "left_anti")


def assign_new_indexes(existing: DataFrame, ids: DataFrame, *, key: str, index: str, day: dt.date) -> DataFrame:
    """The dictionary extended by the ids it lacks, numbered after its largest index.

    Args:
        existing: the current dictionary (`key`, `index`, `first_seen`); may be empty.
        ids: any frame with column `key`; nulls, blanks and repeats are ignored.
        key: the id column name.
        index: the index column name.
        day: recorded as `first_seen` of the new ids.

    Returns:
        `existing` unchanged plus one row per new id: indexes max+1, max+2, ... in id
        order (from 1 when `existing` is empty), `first_seen` = `day`.
    """
    top = existing.agg(F.coalesce(F.max(index), F.lit(PADDING_IDX)).cast("long").alias(_TOP))
    numbered = (
        in_key_order(unseen_ids(existing, ids, key=key), key=key)
        .crossJoin(top)
        .withColumn(index, (F.col(_TOP) + F.col(_POSITION) + 1).cast("int"))
        .withColumn(FIRST_SEEN, F.lit(day))
        .select(key, index, FIRST_SEEN)
    )
    return existing.select(key, index, FIRST_SEEN).unionByName(numbered)


def in_key_order(keys: DataFrame, *, key: str) -> DataFrame:
    """`keys[key]` (distinct, non-null) with `_position` 0, 1, ... in key order (Spark's
    string order); the sort runs when this is called.

    Numbering in key order is what makes the indexes reproducible. The sort spreads the keys
    over range partitions and zipWithIndex counts each partition, then numbers it from the
    sum of the counts before it: no task holds every key, as under a window without
    partitions (on a first day, or a range cleaned at once, every id is new). The sorted
    shuffle is computed once and read by both passes, so they see the same partitions.
    """
    schema = T.StructType([T.StructField(key, T.StringType(), False), T.StructField(_POSITION, T.LongType(), False)])
    positions = keys.select(key).orderBy(key).rdd.map(lambda row: row[0]).zipWithIndex()
    return keys.sparkSession.createDataFrame(positions, schema)


def snapshot_as_of(dictionary: DataFrame, ids: DataFrame, *, key: str, day: dt.date) -> DataFrame:
    """The dictionary as of `day`: ids first seen by then, and those of `ids` first seen later.

    Rerunning a day after later days were cleaned then writes the same snapshot as its
    first run did; a day cleaned late (a backfill) still holds every id it uses.
    """
    used_later = (
        dictionary
        .where(F.col(FIRST_SEEN) > F.lit(day))
        .join(ids.select(key).distinct(), key, "left_semi")
    )
    return dictionary.where(F.col(FIRST_SEEN) <= F.lit(day)).unionByName(used_later)


def require_index(index: str, key: str) -> Column:
    """The index column, failing the task where it is null.

    Every id is added to its dictionary before events or the catalogue are indexed, so
    a missing index is a bug; failing the write leaves the previous output in place.
    """
    message = F.concat(F.lit(f"no {index} for {key} "), F.coalesce(F.col(key), F.lit("null")))
    return F.coalesce(F.col(index), F.raise_error(message).cast("int"))
