"""The one way recpipe builds a SparkSession, under spark-submit or as a plain script."""

from __future__ import annotations

import math
import os
import sys

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from recpipe.config import Config
from recpipe.errors import ConfigError
from recpipe.logs import spark_java_options, stderr_is_terminal
from recpipe.submit import launched_by_spark_submit


def session_settings(cfg: Config) -> dict[str, str]:
    """Spark settings every stage relies on, then the profile's extras."""
    settings = {
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        "spark.driver.memory": cfg.spark.driver_memory,
        # Timestamps are compared and bucketed into days in UTC, whatever the host says.
        "spark.sql.session.timeZone": "UTC",
        # A rerun for day D replaces only the dt=D partition.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.sql.inMemoryColumnarStorage.compressed": str(cfg.spark.cache_compressed).lower(),
    }
    if cfg.spark.local_dir:
        settings["spark.local.dir"] = cfg.spark.local_dir
    # The progress bar redraws itself with carriage returns: live on a terminal, but one
    # line of thousands of characters in a log file.
    settings["spark.ui.showConsoleProgress"] = str(stderr_is_terminal()).lower()
    extra = {k: str(v) for k, v in cfg.spark.extra.items()}
    settings.update(extra)
    if not launched_by_spark_submit():  # JVM options count where the JVM starts: here, or in spark-submit
        settings.update(spark_java_options(extra))
    return settings


PERSIST_LEVELS = ("DISK_ONLY", "MEMORY_AND_DISK", "MEMORY_AND_DISK_DESER", "MEMORY_ONLY")


def persist_level(cfg: Config) -> StorageLevel:
    """The StorageLevel named by `spark.persist_level`; ConfigError for another name."""
    name = cfg.spark.persist_level
    if name not in PERSIST_LEVELS:
        raise ConfigError(f"spark.persist_level must be one of {', '.join(PERSIST_LEVELS)}, got {name!r}")
    return getattr(StorageLevel, name)


def persist(frame: DataFrame, cfg: Config) -> DataFrame:
    """`frame` persisted at the profile's `spark.persist_level`."""
    return frame.persist(persist_level(cfg))


def list_partitions(spark: SparkSession, rows: int, cfg: Config) -> int:
    """Partitions for grouping `rows` rows into lists (`collect_list` by user): enough that
    no task groups more than about `spark.list_rows_per_task` rows, and one per core at
    least. Past a few keys, Spark's `collect_list` sorts a task's whole share, so left
    alone the share is whatever the read tasks hold: at 1 M lines a day, two tasks of
    18.9 M candidates each, whose 512 MB sort arrays ran a 4g heap out."""
    per_task = cfg.spark.list_rows_per_task
    if per_task < 1:
        raise ConfigError(f"spark.list_rows_per_task must be at least 1, got {per_task}")
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / per_task))


def get_spark(cfg: Config, stage: str) -> SparkSession:
    """Get (or create) the session for a stage.

    Under spark-submit the master comes from the command line (the JVM is already up and
    PYSPARK_GATEWAY_PORT is set); otherwise from `spark.master` in the config.
    """
    # Python workers run `python3` from the PATH unless told otherwise, and that one lacks
    # the venv's packages; PySpark reads the choice from this variable, not from a setting.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"{cfg.spark.app_name}-{stage}")
    if not launched_by_spark_submit():
        builder = builder.master(cfg.spark.master)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def blas_implementation(spark: SparkSession) -> str:
    """The class netlib picked for Spark ML's BLAS: JNIBLAS is native, JavaBLAS the fallback."""
    netlib = spark.sparkContext._jvm.dev.ludovic.netlib.blas
    return netlib.BLAS.getInstance().getClass().getName()
