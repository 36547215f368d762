"""Reading the collector's raw files: behaviour-log lines and the item catalogue.

Lines are read as text first and parsed afterwards, so that every line, whatever it
holds, stays a row with its original text: a rejected record is kept exactly as it came.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.schema import BRAND, CATEGORY, ITEM_ID, LINE, PRICE, RAW_EVENT_SCHEMA, TITLE

JSON_OK = "_json_ok"  # true when the line is one JSON object
CORRUPT = "_corrupt_record"
_PARSED = "_parsed"

# Strict JSON: single quotes and NaN/Infinity are JavaScript, not JSON, and a collector
# that writes them is broken. PERMISSIVE keeps the bad line in the corrupt column.
JSON_OPTIONS = {
    "mode": "PERMISSIVE",
    "columnNameOfCorruptRecord": CORRUPT,
    "allowSingleQuotes": "false",
    "allowNonNumericNumbers": "false",
}
# Spark's JSON parser stops after the first value, so `{"a":1} junk` would parse; the whole
# line (up to surrounding whitespace) must be the object.
OBJECT_ENVELOPE = r"(?s)^\s*\{.*\}\s*$"

RAW_CATALOGUE_SCHEMA = T.StructType([T.StructField(name, T.StringType()) for name in (ITEM_ID, CATEGORY, BRAND, PRICE, TITLE)])


def read_raw_lines(spark: SparkSession, location: str) -> DataFrame:
    """Every line of the raw files under `location` (gzip or plain), as column `line`."""
    return spark.read.text(location).withColumnRenamed("value", LINE)


def parse_lines(lines: DataFrame) -> DataFrame:
    """Parse each line as a JSON object whose fields are all read as text.

    Args:
        lines: a frame with column `line`; any other column is carried through.

    Returns:
        One row per input row: `line`, the carried columns, `_json_ok` (false for anything but one JSON
        object: blank lines, truncated objects, arrays, scalars) and the fields of
        `RAW_EVENT_SCHEMA` as strings. A number or a nested object where a string
        belongs arrives as its JSON text; an absent or null field is null.
    """
    schema = T.StructType(RAW_EVENT_SCHEMA.fields + [T.StructField(CORRUPT, T.StringType())])
    parsed = F.col(_PARSED)
    carried = [name for name in lines.columns if name != LINE]  # e.g. the `dt` of a multi-day read
    return (
        lines
        .withColumn(_PARSED, F.from_json(F.col(LINE), schema, JSON_OPTIONS))
        .select(
            LINE,
            *carried,
            is_json_object(F.col(LINE), parsed).alias(JSON_OK),
            *[parsed[field.name].alias(field.name) for field in RAW_EVENT_SCHEMA.fields],
        )
    )


def is_json_object(line: Column, parsed: Column) -> Column:
    """True when `line` is exactly one JSON object (blank lines parse to a null struct)."""
    return F.coalesce(
        line.rlike(OBJECT_ENVELOPE) & parsed.isNotNull() & parsed[CORRUPT].isNull(),
        F.lit(False),
    )


def read_catalogue(spark: SparkSession, location: str) -> DataFrame:
    """The raw item catalogue (JSON lines) with every field as text; bad lines are all-null."""
    return spark.read.schema(RAW_CATALOGUE_SCHEMA).option("mode", "PERMISSIVE").json(location)
