"""The item vocabulary a registered ranker ships: every item known on D with its indexes
and features (read by train to publish a model and by promote to build the gate's rows)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe import io
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.dictionaries import ITEMS, read_snapshot
from recpipe.etl.catalogue import brand_column
from recpipe.schema import BRAND_IDX, CAT_IDX, ITEM_DENSE, ITEM_ID, ITEM_IDX
from recpipe.stage import Partition


def read_vocabulary(spark: SparkSession, cfg: Config, date: dt.date) -> pd.DataFrame:
    """Every item known on D: `item_id`, `item_idx`, `cat_idx` and `brand_idx` (0 = unknown)
    and the item features as of D (`item_dense`, null when the item has none)."""
    day = io.latest_day(cfg, "dim_items", date)
    if day is None:
        raise DataError(f"train: no item dictionary on or before {date} at {cfg.table_path('dim_items')}")
    items = read_snapshot(spark, cfg, ITEMS, day).select(ITEM_ID, F.col(ITEM_IDX).cast("int"))
    catalogue_day = io.latest_day(cfg, "catalogue", date)
    if catalogue_day is not None:
        catalogue = io.read_day(spark, cfg, "catalogue", catalogue_day)
        items = items.join(catalogue.select(ITEM_IDX, CAT_IDX, brand_column(catalogue)), ITEM_IDX, "left")
    else:
        items = items.withColumn(CAT_IDX, F.lit(None).cast("int")).withColumn(BRAND_IDX, F.lit(None).cast("int"))
    if io.table_exists(cfg, "item_features", date):
        items = items.join(io.read_day(spark, cfg, "item_features", date).select(ITEM_IDX, ITEM_DENSE), ITEM_IDX, "left")
    else:
        items = items.withColumn(ITEM_DENSE, F.lit(None).cast("array<float>"))
    return (items
            .withColumn(CAT_IDX, F.coalesce(F.col(CAT_IDX), F.lit(0)))
            .withColumn(BRAND_IDX, F.coalesce(F.col(BRAND_IDX), F.lit(0)))
            .orderBy(ITEM_IDX).toPandas())


def snapshot_reads(cfg: Config, date: dt.date, tables: tuple[str, ...]) -> list[Partition]:
    """The newest snapshot on or before D of each of `tables` that has one."""
    return [Partition(table, day) for table in tables if (day := io.latest_day(cfg, table, date))]


def vocabulary_reads(cfg: Config, date: dt.date) -> list[Partition]:
    """What `read_vocabulary` reads for D."""
    return [*snapshot_reads(cfg, date, ("dim_items", "catalogue")), Partition("item_features", date)]
