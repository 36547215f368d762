"""Reading and writing the lake's tables by name, one day (`dt=`) at a time.

Every write goes to a new version of the table and becomes visible when the stage's
commit is published (`recpipe.tables`): readers here follow the committed versions only,
so a stage that fails or dies half-way leaves every table as it was. Outside a stage's
commit (a test, a notebook) each write is committed on its own.
"""

from __future__ import annotations

import bisect
import datetime as dt
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import paths, tables
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.schema import DT


def location(cfg: Config, name: str, date: dt.date | None = None) -> str | None:
    """Where readers find a table's day D (its committed version), or None."""
    return tables.committed_location(cfg, name, date)


def table_exists(cfg: Config, name: str, date: dt.date | None = None) -> bool:
    if date is None:
        return bool(partition_days(cfg, name)) or paths.exists(cfg.table_path(name))
    return location(cfg, name, date) is not None


def read_days(spark: SparkSession, cfg: Config, name: str, first: dt.date, last: dt.date) -> DataFrame:
    """Rows of the days first..last (inclusive) of a dt-partitioned table, with `dt`.

    Days that were never written are simply absent; a table that has no day at all is
    an error naming it.
    """
    committed = tables.committed_locations(cfg, name)
    if not committed:
        raise DataError(f"table {name!r} does not exist at {cfg.table_path(name)}; run the stage that writes it first")
    # With no day in the range the newest one still gives the schema; the filter empties it.
    chosen = [committed[day] for day in sorted(committed) if first <= day <= last] or [committed[max(committed)]]
    frame = spark.read.parquet(*chosen)
    # The days' folders sit in different versions, which Spark's partition discovery
    # refuses to combine: `dt` comes from each file's own path instead.
    day = F.regexp_extract(F.col("_metadata.file_path"), r".*/dt=([0-9]{4}-[0-9]{2}-[0-9]{2})/", 1).cast("date")
    return frame.withColumn(DT, day).where(F.col(DT).between(F.lit(first), F.lit(last)))


def read_day(spark: SparkSession, cfg: Config, name: str, date: dt.date) -> DataFrame:
    """One day of a dt-partitioned table; an error naming the table and day if absent."""
    found = location(cfg, name, date)
    if found is None:
        raise DataError(f"table {name!r} has no day {date} at {cfg.table_path(name, date)}")
    return spark.read.parquet(found)


def latest_day(cfg: Config, name: str, as_of: dt.date) -> dt.date | None:
    """The newest `dt=` of a snapshot table on or before `as_of`, or None."""
    return newest_on_or_before(partition_days(cfg, name), as_of)


def partition_days(cfg: Config, name: str) -> list[dt.date]:
    """The committed days of a dt-partitioned table, sorted: one pointer read, however
    many days are then asked about."""
    return tables.committed_days(cfg, name)


def newest_on_or_before(days: Sequence[dt.date], as_of: dt.date) -> dt.date | None:
    """The last of the sorted `days` that is on or before `as_of`, or None."""
    position = bisect.bisect_right(days, as_of)
    return days[position - 1] if position else None


def write_days(frame: DataFrame, cfg: Config, name: str, files: int,
               partition_by: Sequence[str] = (DT,)) -> list[dt.date]:
    """Write a frame that carries its own `dt` column as a new version of the days it holds;
    return those days (none for a frame without rows).

    Args:
        frame: rows to write, with the partition columns.
        name: the table's name under `tables:`.
        files: files per partition; rows are repartitioned by the partition columns
            so that each day gets a bounded number of files, not one per task.
    """
    salt = (F.pmod(F.xxhash64(*frame.columns), F.lit(files))) if files > 1 else F.lit(0)
    # Hashing (day, salt) spreads a day over at most `files` tasks however many there are,
    # so a frame of many days (a whole-history clean) is written by every core, not one.
    tasks = max(files, frame.sparkSession.sparkContext.defaultParallelism, 1)
    with tables.committing(cfg, f"write {name}") as commit:
        (
            frame
            .repartition(tasks, *[F.col(c) for c in partition_by], salt)
            .write
            .mode("overwrite")
            .partitionBy(*partition_by)
            .parquet(commit.version_root(name))
        )
        return commit.wrote(name)


def replace_days(frame: DataFrame, cfg: Config, name: str, days: Sequence[dt.date], files: int) -> None:
    """Write a frame that carries its own `dt` column so that each of `days` afterwards holds
    exactly the frame's rows of that day: days the frame has no rows for are removed."""
    present = {row[DT] for row in frame.select(DT).distinct().collect()}  # at most len(days) rows
    stray = sorted(set(present) - set(days))
    if stray:
        raise DataError(f"{name}: rows for {stray[0]}, outside the days being replaced ({min(days)}..{max(days)})")
    with tables.committing(cfg, f"write {name}") as commit:
        if present:
            write_days(frame, cfg, name, files)
        for day in days:
            if day not in present:
                commit.remove(name, day)


def with_day(frame: DataFrame, date: dt.date) -> DataFrame:
    """Tag rows with the day they belong to, as the `dt` partition column."""
    return frame.withColumn(DT, F.lit(date))


def write_version(frame: DataFrame, cfg: Config, name: str, date: dt.date, files: int) -> str:
    """Write day D of table `name` (a frame without `dt`, or a `{dt}` sub-table) as a new
    version in `files` files; returns the folder, which readers see once committed."""
    with tables.committing(cfg, f"write {name}") as commit:
        target = commit.day_location(name, date)
        frame.coalesce(max(files, 1)).write.mode("overwrite").parquet(target)
        commit.wrote(name, [date])
    return target


def write_file(cfg: Config, name: str, date: dt.date, file_name: str, data: bytes) -> str:
    """Write one file (a JSON report, `_meta.json`) into day D of table `name`'s new version,
    beside whatever else the stage writes there; returns its location."""
    with tables.committing(cfg, f"write {name}") as commit:
        location = paths.join_uri(commit.day_location(name, date), file_name)
        paths.write_bytes(location, data)
        commit.wrote(name, [date])
    return location


def read_path(spark: SparkSession, location: str | None, what: str = "") -> DataFrame:
    """A Parquet folder by location; an error naming it if absent."""
    if location is None or not paths.exists(location):
        raise DataError(f"no data at {location or what}")
    return spark.read.parquet(location)


def write_day(frame: DataFrame, cfg: Config, name: str, date: dt.date, files: int, rows: int | None = None) -> None:
    """Replace day D of a table by `frame` (without a `dt` column).

    A frame with no rows removes D, so no stale D of an earlier run stays readable. `rows`,
    when known, is trusted; otherwise the write itself tells: an empty frame writes no `dt=`
    folder. (Asking the frame first would compute it twice: once to see a row, once to write.)
    """
    with tables.committing(cfg, f"write {name}") as commit:
        if rows == 0:
            commit.remove(name, date)
            return
        if date not in write_days(with_day(frame, date), cfg, name, files):
            commit.remove(name, date)
            paths.delete_dir(commit.version_root(name))  # only Spark's _SUCCESS: the table is written once a commit
