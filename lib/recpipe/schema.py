"""Column names and table schemas shared by the stages: the contracts of DESIGN.md.

Library boundaries call `require_columns` so that a missing column is reported by name
instead of surfacing as an analysis error deep in a plan.
"""

from __future__ import annotations

from typing import Iterable

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recpipe.errors import DataError

# Raw behaviour log fields (JSON lines written by collectors).
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
TS = "ts"
SESSION_ID = "session_id"
REQUEST_ID = "request_id"
POSITION = "position"
DEVICE = "device"
PRICE = "price"
RATING = "rating"

# Added by the pipeline.
DT = "dt"                      # partition column: the day D a row belongs to, YYYY-MM-DD
USER_IDX = "user_idx"          # dense user index from the append-only dictionary; 0 = padding/unknown
ITEM_IDX = "item_idx"
CAT_IDX = "cat_idx"
BRAND_IDX = "brand_idx"        # dense brand index from the brand dictionary; 0 = none/unknown
CATEGORY = "category"
BRAND = "brand"
TITLE = "title"
LINE = "line"                  # the original raw line of a rejected record
REJECT_REASON = "reject_reason"
REJECT_FIELD = "reject_field"
FIRST_SEEN = "first_seen"      # the day an id entered its dictionary
LABEL = "label"
SPLIT = "split"
HIST_ITEMS = "hist_items"
HIST_CATS = "hist_cats"
HIST_BRANDS = "hist_brands"
HIST_LEN = "hist_len"
ALS_SCORE = "als_score"
TS_MS = "ts_ms"                # event time as epoch milliseconds (int64), in the ranker samples
USER_DENSE = "user_dense"      # float32 array of user features as of a day's cut-off
ITEM_DENSE = "item_dense"      # float32 array of item features as of a day's cut-off
FAV_CATS = "fav_cats"          # a user's favourite cat_idx values, most interacted first, 0-padded
RECENCY_DAYS = "recency_days"  # days from the last interaction to the cut-off

PADDING_IDX = 0

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase", "rating")

REJECT_REASONS = (
    "malformed_json",
    "missing_field",
    "unknown_event_type",
    "bad_timestamp",
    "future_timestamp",
    "invalid_value",
    "duplicate_event",
    "bot_traffic",
)

# Raw fields that hold ids: they must be JSON strings, and not blank once Unicode
# whitespace, format and control characters are taken away.
RAW_ID_FIELDS = (EVENT_ID, USER_ID, ITEM_ID, SESSION_ID, REQUEST_ID)

# Every raw field is read as text: a number where a string belongs (or the reverse) must
# not make the JSON reader null the whole record, and `ts` comes both ways.
RAW_EVENT_SCHEMA = T.StructType(
    [T.StructField(name, T.StringType()) for name in (
        EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TS, SESSION_ID, REQUEST_ID, POSITION, DEVICE, PRICE, RATING,
    )]
)

EVENTS_SCHEMA = T.StructType(
    [
        T.StructField(EVENT_ID, T.StringType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(EVENT_TYPE, T.StringType(), False),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField(SESSION_ID, T.StringType()),
        T.StructField(REQUEST_ID, T.StringType()),
        T.StructField(POSITION, T.IntegerType()),
        T.StructField(DEVICE, T.StringType()),
        T.StructField(PRICE, T.DoubleType()),
        T.StructField(RATING, T.DoubleType()),
    ]
)

REJECTS_SCHEMA = T.StructType(
    [
        T.StructField(LINE, T.StringType()),
        T.StructField(REJECT_REASON, T.StringType(), False),
        T.StructField(REJECT_FIELD, T.StringType()),
    ]
)


def require_columns(frame: DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise DataError naming the first column `where` needs and `frame` lacks."""
    present = set(frame.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; has {', '.join(frame.columns)}")
