"""Reading and writing the lake's tables by name, one day (`dt=`) at a time.

Writes use Spark's dynamic partition overwrite (set on every session by recpipe.spark):
tasks write into a staging folder and the `dt=D` folder is swapped in only when the job
commits, so a rerun replaces D alone and a job that fails half-way leaves the previous
D readable and intact.
"""

from __future__ import annotations

import bisect
import datetime as dt
import uuid
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import paths
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.schema import DT


def table_exists(cfg: Config, name: str, date: dt.date | None = None) -> bool:
    return paths.exists(cfg.table_path(name, date))


def read_days(spark: SparkSession, cfg: Config, name: str, first: dt.date, last: dt.date) -> DataFrame:
    """Rows of the days first..last (inclusive) of a dt-partitioned table.

    Days that were never written are simply absent; a table that does not exist at all
    is an error naming it.
    """
    if not table_exists(cfg, name):
        raise DataError(f"table {name!r} does not exist at {cfg.table_path(name)}; run the stage that writes it first")
    return spark.read.parquet(cfg.table_path(name)).where(F.col(DT).between(F.lit(first), F.lit(last)))


def read_day(spark: SparkSession, cfg: Config, name: str, date: dt.date) -> DataFrame:
    """One day of a dt-partitioned table; an error naming the table and day if absent."""
    if not table_exists(cfg, name, date):
        raise DataError(f"table {name!r} has no day {date} at {cfg.table_path(name, date)}")
    return spark.read.parquet(cfg.table_path(name, date))


def latest_day(cfg: Config, name: str, as_of: dt.date) -> dt.date | None:
    """The newest `dt=` of a snapshot table on or before `as_of`, or None."""
    return newest_on_or_before(partition_days(cfg, name), as_of)


def partition_days(cfg: Config, name: str) -> list[dt.date]:
    """The days of a dt-partitioned table (its `dt=` folders), sorted: one listing, however
    many days are then asked about."""
    fs, root = paths.filesystem_for(cfg.table_path(name))
    from pyarrow import fs as pafs

    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    days = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        base = info.base_name
        if info.type == pafs.FileType.Directory and base.startswith(f"{DT}="):
            try:
                days.append(dt.date.fromisoformat(base[len(DT) + 1:]))
            except ValueError:
                continue
    return sorted(days)


def newest_on_or_before(days: Sequence[dt.date], as_of: dt.date) -> dt.date | None:
    """The last of the sorted `days` that is on or before `as_of`, or None."""
    position = bisect.bisect_right(days, as_of)
    return days[position - 1] if position else None


def write_days(frame: DataFrame, cfg: Config, name: str, files: int, partition_by: Sequence[str] = (DT,)) -> None:
    """Write a frame that carries its own `dt` column, replacing only the days it holds.

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
    (
        frame
        .repartition(tasks, *[F.col(c) for c in partition_by], salt)
        .write
        .mode("overwrite")
        .partitionBy(*partition_by)
        .parquet(cfg.table_path(name))
    )


def replace_days(frame: DataFrame, cfg: Config, name: str, days: Sequence[dt.date], files: int) -> None:
    """Write a frame that carries its own `dt` column so that each of `days` afterwards holds
    exactly the frame's rows of that day: days the frame has no rows for are removed (dynamic
    overwrite alone would leave their old rows in place)."""
    present = {row[DT] for row in frame.select(DT).distinct().collect()}  # at most len(days) rows
    stray = sorted(set(present) - set(days))
    if stray:
        raise DataError(f"{name}: rows for {stray[0]}, outside the days being replaced ({min(days)}..{max(days)})")
    if present:
        write_days(frame, cfg, name, files)
    for day in days:
        if day not in present:
            paths.delete_dir(cfg.table_path(name, day))


def with_day(frame: DataFrame, date: dt.date) -> DataFrame:
    """Tag rows with the day they belong to, as the `dt` partition column."""
    return frame.withColumn(DT, F.lit(date))


def write_replacing(frame: DataFrame, location: str, files: int) -> None:
    """Write a whole folder so that readers see either the old or the new content.

    Spark writes into a staging folder beside the target (its name starts with `_`, so
    Spark readers of the parent ignore it); only a complete write is then swapped in.
    A job that fails while writing leaves the previous folder untouched.
    """
    parent, name = location.rstrip("/").rsplit("/", 1)
    staging = f"{parent}/_staging-{name}-{uuid.uuid4().hex[:12]}"
    frame.coalesce(max(files, 1)).write.mode("errorifexists").parquet(staging)
    publish_folder(frame.sparkSession, staging, location)


def publish_folder(spark: SparkSession, staging: str, target: str) -> None:
    """Swap a finished staging folder into place through Hadoop's FileSystem (local, HDFS, S3A)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path
    fs = hadoop_path(target).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    target_path = hadoop_path(target)
    backup = hadoop_path(f"{staging}-replaced")
    had_previous = fs.exists(target_path)
    if had_previous and not fs.rename(target_path, backup):
        raise DataError(f"could not move the previous {target} aside; nothing was changed")
    if not fs.rename(hadoop_path(staging), target_path):
        if had_previous:
            fs.rename(backup, target_path)
        raise DataError(f"could not publish {staging} as {target}; the previous output was restored")
    if had_previous:
        fs.delete(backup, True)


def read_path(spark: SparkSession, location: str) -> DataFrame:
    """A Parquet folder by location; an error naming it if absent."""
    if not paths.exists(location):
        raise DataError(f"no data at {location}")
    return spark.read.parquet(location)


def write_day(frame: DataFrame, cfg: Config, name: str, date: dt.date, files: int, rows: int | None = None) -> None:
    """Replace day D of a table by `frame` (without a `dt` column).

    With no rows, dynamic overwrite would write nothing and keep a stale D from an
    earlier run, so an empty day removes D instead. Pass `rows` when it is known, to
    spare the emptiness check its Spark job.
    """
    empty = rows == 0 if rows is not None else frame.isEmpty()
    if empty:
        paths.delete_dir(cfg.table_path(name, date))
        return
    write_days(with_day(frame, date), cfg, name, files)
