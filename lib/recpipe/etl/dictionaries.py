"""Append-only id dictionaries: string ids to dense int indexes that never change.

Each dictionary is a snapshot table (`dt=D` holds the whole dictionary as of day D:
id, index, first_seen). A run reads the newest snapshot, keeps every index in it and
numbers unseen ids after the largest one, in id order, so the same input always gets
the same indexes. Index 0 (`schema.PADDING_IDX`) is never assigned: it means padding
or unknown downstream. How a day older than the newest snapshot is handled (nothing is
numbered) is `recpipe.etl.clean.update_dictionaries`.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import Column, DataFrame, SparkSession, Window
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
_AT = "_at"
# The columns of several dictionaries stacked into one frame (`stacked`).
_TABLE = "_table"
_ID = "_id"
_INDEX = "_index"
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


def read_newest_snapshots(spark: SparkSession, cfg: Config, specs: tuple[DictionarySpec, ...]
                          ) -> dict[DictionarySpec, tuple[DataFrame, dt.date | None]]:
    """Per dictionary, its newest snapshot (any day) and that day; empty and None if none.

    The snapshots are checked (dense, unique) and so is that each extends the one before
    it: these are the snapshots new ids are numbered after. One job checks them all.
    """
    found = {}
    for spec in specs:
        if (newest := io.latest_day(cfg, spec.table, NEWEST)) is not None:
            found[spec] = (spark.read.schema(spec.schema).parquet(snapshot_location(cfg, spec, newest)), newest)
    check_snapshots(found)
    check_extends_previous(spark, cfg, found)
    return {spec: found.get(spec, (spark.createDataFrame([], spec.schema), None)) for spec in specs}


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
    """DictionaryError unless the snapshot's indexes are 1..n, one per id and one id per index."""
    check_snapshots({spec: (snapshot, day)})


def check_snapshots(snapshots: Mapping[DictionarySpec, tuple[DataFrame, dt.date]]) -> None:
    """`check_snapshot` for each (snapshot, day): one aggregate over all of them when they
    are sound; the first bad id is looked for only in one that is not."""
    if not snapshots:
        return
    stats = stacked_stats(stacked({spec: frame for spec, (frame, _) in snapshots.items()}))
    for spec, (snapshot, day) in snapshots.items():
        if stats[spec.table]["rows"] == 0:
            raise DictionaryError(f"{spec.table} dt={day}: the snapshot is empty, but a dictionary only grows; restore "
                                  f"it (or remove the folder and clean the days from {day} on again)")
        require_dense(snapshot, spec, day, stats[spec.table])


def stacked(snapshots: Mapping[DictionarySpec, DataFrame]) -> DataFrame:
    """Several dictionaries as one frame (`_table`, `_id`, `_index`, `first_seen`).

    A clean checks, numbers and counts its four dictionaries; each of those on each
    dictionary alone is a few small Spark jobs, and a small day's clean spent most of
    its time starting them. Stacked, one job does each for all four.
    """
    parts = [frame.select(F.lit(spec.table).alias(_TABLE), F.col(spec.key).alias(_ID),
                          F.col(spec.index).cast("int").alias(_INDEX), F.col(FIRST_SEEN))
             for spec, frame in snapshots.items()]
    return functools.reduce(DataFrame.unionByName, parts)


def unstacked(frame: DataFrame, spec: DictionarySpec) -> DataFrame:
    """One dictionary's rows of a `stacked` frame, with its own column names."""
    return frame.where(F.col(_TABLE) == spec.table).select(
        F.col(_ID).alias(spec.key), F.col(_INDEX).alias(spec.index), F.col(FIRST_SEEN))


def stacked_stats(frame: DataFrame, day: dt.date | None = None) -> dict[str, dict]:
    """Per dictionary of a `stacked` frame (by table name), in one aggregate: `rows`,
    distinct `keys` and `indexes`, `low` and `high` index, `nulls` (rows without id or
    index) and `new` (ids first seen on `day`). A table without rows has all zeros."""
    key, index = F.col(_ID), F.col(_INDEX)
    rows = frame.groupBy(_TABLE).agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(key).alias("keys"),
        F.countDistinct(index).alias("indexes"),
        F.min(index).alias("low"),
        F.max(index).alias("high"),
        F.count(F.when(key.isNull() | index.isNull(), 1)).alias("nulls"),
        F.count(F.when(F.col(FIRST_SEEN) == F.lit(day), 1)).alias("new"),
    ).collect()  # a row per dictionary
    empty = dict.fromkeys(("rows", "keys", "indexes", "low", "high", "nulls", "new"), 0)
    return collections.defaultdict(lambda: dict(empty), {row[_TABLE]: row.asDict() for row in rows})


def require_dense(snapshot: DataFrame, spec: DictionarySpec, day: dt.date, stats: Mapping) -> None:
    """DictionaryError unless `stats` (the snapshot's, from `stacked_stats`) say its indexes
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


def check_extends_previous(spark: SparkSession, cfg: Config,
                           snapshots: Mapping[DictionarySpec, tuple[DataFrame, dt.date]]) -> None:
    """DictionaryError unless each (snapshot, day) holds every id of its dictionary's
    snapshot before that day with the same index; one join checks them all."""
    previous_days = {spec: previous for spec, (_, day) in snapshots.items()
                     if (previous := io.latest_day(cfg, spec.table, day - dt.timedelta(days=1))) is not None}
    if not previous_days:
        return
    previous = stacked({spec: spark.read.schema(spec.schema).parquet(snapshot_location(cfg, spec, previous))
                        for spec, previous in previous_days.items()})
    now = stacked({spec: snapshots[spec][0] for spec in previous_days}).select(_TABLE, _ID, F.col(_INDEX).alias("_now"))
    lost = (previous.join(now, [_TABLE, _ID], "left")
            .where(F.col("_now").isNull() | (F.col("_now") != F.col(_INDEX))))
    row = lost.orderBy(_TABLE, _ID).first()
    if row is None:
        return
    spec = next(spec for spec in previous_days if spec.table == row[_TABLE])
    what = f"lacks id {row[_ID]!r}" if row["_now"] is None else f"gives id {row[_ID]!r} index {row['_now']}"
    raise DictionaryError(f"{spec.table} dt={snapshots[spec][1]}: {what} (index {row[_INDEX]} on "
                          f"dt={previous_days[spec]}); each snapshot must hold every id of the one before with the "
                          "same index")


def unseen_ids(existing: DataFrame, ids: DataFrame, *, key: str, within: tuple[str, ...] = ()) -> DataFrame:
    """Distinct non-blank values of `ids[key]` that `existing` does not hold yet (with
    `within`, per value of those columns too: `_table` of `stacked` dictionaries)."""
    columns = [*within, key]
    candidates = ids.select(columns).where(F.col(key).isNotNull() & ~F.col(key).rlike(BLANK)).distinct()
    return candidates.join(existing.select(columns), columns, "left_anti")


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
    spec = DictionarySpec("dictionary", key, index)
    return unstacked(number_new_ids(stacked({spec: existing}), stacked_ids({spec: ids}), day=day), spec)


def stacked_ids(ids: Mapping[DictionarySpec, DataFrame]) -> DataFrame:
    """Per dictionary, a frame with its `key` column, as one frame (`_table`, `_id`)."""
    parts = [frame.select(F.lit(spec.table).alias(_TABLE), F.col(spec.key).alias(_ID)) for spec, frame in ids.items()]
    return functools.reduce(DataFrame.unionByName, parts)


def number_new_ids(existing: DataFrame, ids: DataFrame, *, day: dt.date) -> DataFrame:
    """`assign_new_indexes` for several dictionaries at once: `existing` is `stacked`, `ids`
    is `stacked_ids`; each dictionary's new ids are numbered after its own largest index.

    Numbering in id order (Spark's string order) is what makes the indexes reproducible.
    One task per dictionary numbers its new ids: on a nightly day they are a few hundred,
    and where every id is new (a first day, a range cleaned at once) Spark sorts them in
    that task with spills to disk, as `StringIndexer` gathers every label on the driver.
    A numbering spread over range partitions (zipWithIndex) took three more jobs and a
    trip through Python workers on every day.
    """
    tops = existing.groupBy(_TABLE).agg(F.max(_INDEX).cast("long").alias(_TOP))
    in_id_order = Window.partitionBy(_TABLE).orderBy(_ID)
    numbered = (
        unseen_ids(existing, ids, key=_ID, within=(_TABLE,))
        .join(F.broadcast(tops), _TABLE, "left")  # a row per dictionary
        .withColumn(_INDEX, (F.coalesce(F.col(_TOP), F.lit(PADDING_IDX)) + F.row_number().over(in_id_order))
                    .cast("int"))
        .withColumn(FIRST_SEEN, F.lit(day))
        .select(_TABLE, _ID, _INDEX, FIRST_SEEN)
    )
    return existing.select(_TABLE, _ID, _INDEX, FIRST_SEEN).unionByName(numbered)


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
