"""The item catalogue as the lake keeps it: one row per item, with item and category indexes."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recpipe.etl.rejects import BLANK, non_negative_number
from recpipe.schema import BRAND, BRAND_IDX, CAT_IDX, CATEGORY, ITEM_ID, ITEM_IDX, PADDING_IDX, PRICE, TITLE

CATALOGUE_COLUMNS = (ITEM_ID, ITEM_IDX, CATEGORY, CAT_IDX, BRAND, BRAND_IDX, PRICE, TITLE)
_ATTRIBUTES = "_attributes"


def clean_catalogue(raw: DataFrame) -> DataFrame:
    """One row per non-blank item id, price as a double (null unless a number >= 0).

    An item listed twice keeps its largest (category, brand, price, title) so that
    reruns agree; a blank category or brand becomes null.
    """
    attributes = F.struct(
        F.when(~F.col(CATEGORY).rlike(BLANK), F.col(CATEGORY)).alias(CATEGORY),
        F.when(~F.col(BRAND).rlike(BLANK), F.col(BRAND)).alias(BRAND),
        non_negative_number(PRICE).alias(PRICE),
        F.col(TITLE).alias(TITLE),
    )
    return (
        raw
        .where(F.col(ITEM_ID).isNotNull() & ~F.col(ITEM_ID).rlike(BLANK))
        .groupBy(ITEM_ID)
        .agg(F.max(attributes).alias(_ATTRIBUTES))
        .select(ITEM_ID, f"{_ATTRIBUTES}.*")
    )


def brand_column(catalogue: DataFrame) -> Column:
    """`brand_idx` of a catalogue frame; 0 (unknown) for a snapshot written before brands
    had a dictionary."""
    return F.col(BRAND_IDX) if BRAND_IDX in catalogue.columns else F.lit(PADDING_IDX).alias(BRAND_IDX)


def index_catalogue(catalogue: DataFrame, items: DataFrame, categories: DataFrame, brands: DataFrame) -> DataFrame:
    """The catalogue with `item_idx`, `cat_idx` and `brand_idx` (0 for an item without a
    known category or brand).

    Args:
        catalogue: output of `clean_catalogue`.
        items: the item dictionary. An item it lacks is left out: that only happens when
            a past day is cleaned again and the catalogue has since listed new items.
        categories: the category dictionary.
        brands: the brand dictionary.
    """
    return (
        catalogue
        .join(items.select(ITEM_ID, ITEM_IDX), ITEM_ID, "inner")
        .join(categories.select(CATEGORY, CAT_IDX), CATEGORY, "left")
        .join(brands.select(BRAND, BRAND_IDX), BRAND, "left")
        .withColumn(CAT_IDX, F.coalesce(F.col(CAT_IDX), F.lit(PADDING_IDX)).cast("int"))
        .withColumn(BRAND_IDX, F.coalesce(F.col(BRAND_IDX), F.lit(PADDING_IDX)).cast("int"))
        .select(*CATALOGUE_COLUMNS)
    )
