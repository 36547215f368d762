"""Reading the collector's raw files: behaviour-log lines and the item catalogue.

Lines are read as text first and parsed afterwards, so that every line, whatever it
holds, stays a row with its original text: a rejected record is kept exactly as it came.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.schema import BRAND, CATEGORY, ITEM_ID, LINE, PRICE, RAW_EVENT_SCHEMA, RAW_ID_FIELDS, TITLE

JSON_OK = "_json_ok"  # true when the line is one JSON object
NON_STRING_ID = "_non_string_id"  # the first id field whose JSON value is not a string, or null
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
# Spark's JSON parser stops after the first value, so `{"a":1} junk` or `{…}{…}` would parse
# as their first object; the whole line (up to surrounding whitespace) must be the object.
OBJECT_ENVELOPE = r"(?s)^\s*\{.*\}\s*$"
# Every field is read as text, so `"user_id": 7` and `"user_id": "7"` both arrive as "7".
# Reading an id field a second time as a number, a boolean, a map or an array tells them
# apart: the read succeeds only for a value of that JSON type (with partial results, a
# failed field is null alone). Only text such a value arrives as (digits, true/false, `{`,
# `[`) is read again, so ordinary string ids cost nothing.

RAW_CATALOGUE_SCHEMA = T.StructType([T.StructField(name, T.StringType()) for name in (ITEM_ID, CATEGORY, BRAND, PRICE, TITLE)])


def read_raw_lines(spark: SparkSession, *locations: str) -> DataFrame:
    """Every line of the raw files (or folders of them; gzip or plain), as column `line`."""
    return spark.read.text(list(locations)).withColumnRenamed("value", LINE)


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
            first_non_string_field(F.col(LINE), parsed, RAW_ID_FIELDS).alias(NON_STRING_ID),
            *[parsed[field.name].alias(field.name) for field in RAW_EVENT_SCHEMA.fields],
        )
    )


def is_json_object(line: Column, parsed: Column) -> Column:
    """True when `line` is exactly one JSON object (blank lines parse to a null struct)."""
    return F.coalesce(
        line.rlike(OBJECT_ENVELOPE) & parsed.isNotNull() & parsed[CORRUPT].isNull() & closes_once_at_end(line),
        F.lit(False),
    )


def closes_once_at_end(line: Column) -> Column:
    """True when the brackets outside strings return to depth 0 once, at the last one.

    With the envelope (`{` first, `}` last) and a successful parse of the first object, this
    is what makes the first object the whole line: `{…}{…}` and `{…} junk}` close twice or
    below zero. Escapes are dropped before strings, so `"\\"}"` cannot end a string early.
    """
    unescaped = F.regexp_replace(line, r"\\.", "")
    brackets = F.regexp_replace(F.regexp_replace(unescaped, r'"[^"]*"', ""), r"[^\[\]{}]", "")
    walk = F.aggregate(
        F.split(brackets, ""),
        F.struct(F.lit(0).alias("depth"), F.lit(0).alias("closes")),
        lambda acc, c: F.struct(
            (acc["depth"] + F.when(c.isin("{", "["), 1).when(c.isin("}", "]"), -1).otherwise(0)).alias("depth"),
            (acc["closes"] + F.when(c.isin("}", "]") & (acc["depth"] <= 1), 1).otherwise(0)).alias("closes"),
        ),
    )
    return (walk["depth"] == 0) & (walk["closes"] == 1)


def first_non_string_field(line: Column, parsed: Column, fields) -> Column:
    """The first of `fields` whose value in the line is a JSON number, boolean, object or
    array rather than a string; null when every present one is a string.

    Only text that such a value turns into is read again, and the
    common case, numeric-looking ids (MovieLens numbers its users), with one extra parse
    of the line for all fields together.
    """
    looks_numeric = {name: parsed[name].rlike(r"^-?[0-9]") for name in fields}
    any_numeric = looks_numeric[fields[0]]
    for name in fields[1:]:
        any_numeric = any_numeric | looks_numeric[name]
    as_numbers = F.when(any_numeric, F.from_json(line, T.StructType([T.StructField(n, T.DoubleType()) for n in fields])))

    def not_a_string(name: str) -> Column:
        text = parsed[name]
        other = F.when(text.isin("true", "false"), reread(line, name, T.BooleanType())) \
            .when(text.startswith("{"), reread(line, name, T.MapType(T.StringType(), T.StringType()))) \
            .when(text.startswith("["), reread(line, name, T.ArrayType(T.StringType())))
        return F.coalesce(F.when(looks_numeric[name], as_numbers[name].isNotNull()), other, F.lit(False))

    return F.coalesce(*[F.when(not_a_string(name), F.lit(name)) for name in fields], F.lit(None).cast("string"))


def reread(line: Column, name: str, kind: T.DataType) -> Column:
    """True when field `name` of the line reads as a value of `kind` (null where it fails)."""
    return F.from_json(line, T.StructType([T.StructField(name, kind)]))[name].isNotNull()


def read_catalogue(spark: SparkSession, location: str) -> DataFrame:
    """The raw item catalogue (JSON lines) with every field as text; bad lines are all-null."""
    return spark.read.schema(RAW_CATALOGUE_SCHEMA).option("mode", "PERMISSIVE").json(location)
