"""Why a raw line is rejected: the reason codes of DESIGN.md, in precedence order.

A line gets the first reason that applies, so every line ends with exactly one outcome:

1. `malformed_json`: not exactly one JSON object (field: `line`): also two objects on one
   line (`{…}{…}`) and an object followed by anything (`{…} junk}`);
2. `missing_field`: the first of `required_fields` absent, null or blank (ASCII whitespace);
3. `unknown_event_type`: `event_type` not one of `event_types`;
4. `bad_timestamp`: `ts` neither epoch milliseconds (1 to 15 digits) nor ISO-8601 with
   seconds and an offset (`Z` or `±HH:MM`), no real instant (month 13, hour 25), or
   before `earliest` (UTC midnight). Epoch *seconds* are never read as such: ten digits
   read as milliseconds fall in April 1970 at the latest, before any allowed `earliest`;
5. `future_timestamp`: `ts` later than the end of the day (UTC) plus the tolerance;
6. `invalid_value`: the first id field (`RAW_ID_FIELDS`) that is present but not a JSON
   string, or nothing but Unicode whitespace, format (zero-width) and control characters;
   else the first of position, price, rating that is present but not a non-negative
   finite number (position: a whole number that fits an int);
7. `duplicate_event`: an event id already accepted on one of the look-back days (every
   copy is rejected), or met again on the same day (the copy with the earliest `ts`,
   then the smallest line, is kept);
8. `bot_traffic`: every remaining event of a user who sent more than the limit inside
   one tumbling window (windows aligned to the epoch, so to UTC midnight).

Reasons 1-6 look at one line alone (`check_rows`); 7-8 compare lines (`classify_lines`)
and consider only the lines that passed everything before them. Built-in Spark
functions only: anything unparseable becomes null and then a reason, never an error.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.etl.raw import JSON_OK, NON_STRING_ID
from recpipe.schema import (DT, EVENT_ID, EVENT_TYPE, LINE, POSITION, PRICE, RATING, RAW_ID_FIELDS, REJECT_FIELD,
                            REJECT_REASON, TS, USER_ID)

MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
INVALID_VALUE = "invalid_value"
DUPLICATE_EVENT = "duplicate_event"
BOT_TRAFFIC = "bot_traffic"
PRECEDENCE = (MALFORMED_JSON, MISSING_FIELD, UNKNOWN_EVENT_TYPE, BAD_TIMESTAMP, FUTURE_TIMESTAMP, INVALID_VALUE,
              DUPLICATE_EVENT, BOT_TRAFFIC)

# `\z` is the very end: `$` would also accept a trailing newline inside the value.
EPOCH_MILLIS = r"^[0-9]{1,15}\z"  # 16 digits would overflow microseconds
ISO_8601_WITH_OFFSET = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\z"
DECIMAL = r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\z"
BLANK = r"^\s*\z"
# Blank to a reader: Unicode whitespace and separators, format characters such as the
# zero-width space and the byte-order mark, and control characters.
UNICODE_BLANK = r"(?U)^[\s\p{Z}\p{Cf}\p{Cc}]*\z"
# The latest instant ten digits can name in milliseconds (epoch seconds until 2286, read as
# ms): `earliest` must lie after it, so that epoch seconds are always bad_timestamp.
LATEST_TEN_DIGIT_MILLIS = dt.datetime(1970, 4, 26, 17, 46, 39, 999000, tzinfo=dt.timezone.utc)
NUMERIC_FIELDS = (POSITION, PRICE, RATING)  # checked for invalid_value, in this order
MAX_INT = 2**31 - 1
MAX_DOUBLE = sys.float_info.max

_DELIVERY = "_delivery"
_SEEN_BEFORE = "_seen_before"
_IS_BOT = "_is_bot"
_WINDOW = "_window"


def try_cast(column: str, type_name: str) -> Column:
    """`column` cast to `type_name`, null where it does not convert (even in ANSI mode)."""
    return F.expr(f"try_cast(`{column}` AS {type_name})")


def parse_timestamp(column: str) -> Column:
    """A UTC timestamp from epoch-millisecond digits or ISO-8601 with an offset; else null."""
    text = F.col(column)
    return F.coalesce(
        F.when(text.rlike(EPOCH_MILLIS), F.timestamp_millis(try_cast(column, "BIGINT"))),
        # The shape is checked first; the cast then rejects impossible dates and times.
        F.when(text.rlike(ISO_8601_WITH_OFFSET), try_cast(column, "TIMESTAMP")),
    )


def non_negative_number(column: str) -> Column:
    """The field as a double when it is a finite number >= 0; else null."""
    value = try_cast(column, "DOUBLE")
    return F.when(F.col(column).rlike(DECIMAL) & value.between(0.0, MAX_DOUBLE), value)


def slot_number(column: str) -> Column:
    """The field as an int when it is a whole number in 0..2^31-1 (`3` or `3.0`); else null."""
    value = try_cast(column, "DOUBLE")
    ok = F.col(column).rlike(DECIMAL) & value.between(0.0, float(MAX_INT)) & (value == F.floor(value))
    return F.when(ok, value.cast("int"))


def typed(column: str) -> str:
    """Where `check_rows` keeps a field's typed value while the text is still needed."""
    return f"_typed_{column}"


def is_blank(column: str) -> Column:
    return F.col(column).isNull() | F.col(column).rlike(BLANK)


def first_field(fields: Sequence[str], failing) -> Column:
    """The name of the first field for which `failing(field)` holds, or null."""
    return F.coalesce(*[F.when(failing(name), F.lit(name)) for name in fields], F.lit(None).cast("string"))


def first_match(cases: Sequence[tuple[Column, Column]]) -> Column:
    """The value of the first case whose condition holds (CASE WHEN ... END), else null."""
    (condition, value), *rest = cases
    chain = F.when(condition, value)
    for condition, value in rest:
        chain = chain.when(condition, value)
    return chain


def midnight_micros(day: dt.date) -> int:
    """Epoch microseconds of the start of `day` (UTC)."""
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000


def day_end_limit_micros(day: dt.date, future_tolerance_minutes: int) -> int:
    """Epoch microseconds of the end of `day` (UTC midnight after it) plus the tolerance."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return int((end + dt.timedelta(minutes=future_tolerance_minutes)).timestamp()) * 1_000_000


def day_end_limit(day: dt.date | None, future_tolerance_minutes: int) -> Column:
    """The latest acceptable `ts` in epoch microseconds: the end of `day` plus the tolerance,
    or, with no day, the end of each row's own `dt` (the file it came from) plus the tolerance."""
    if day is not None:
        return F.lit(day_end_limit_micros(day, future_tolerance_minutes))
    next_midnight = (F.unix_date(F.col(DT)).cast("long") + F.lit(1)) * F.lit(86_400_000_000)
    return next_midnight + F.lit(future_tolerance_minutes * 60_000_000)


def check_rows(parsed: DataFrame, *, required_fields: Sequence[str], event_types: Sequence[str],
               day: dt.date | None, future_tolerance_minutes: int, earliest: dt.date) -> DataFrame:
    """Reasons 1-6, which need only the line itself, and the typed event values.

    Args:
        parsed: output of `raw.parse_lines`.
        required_fields: raw fields that must be present and non-blank.
        event_types: the accepted event types.
        day: the day D whose file is being cleaned; None for several days' files, whose
            rows then carry their file's day as `dt`.
        future_tolerance_minutes: how far after the end of D (UTC) a `ts` may lie.
        earliest: the first day (UTC) a `ts` may lie on.

    Returns:
        `parsed` with `ts` a UTC timestamp, `position` int, `price` and `rating` double
        (null where they do not parse), `reject_reason` and `reject_field` (null while
        the line passes).
    """
    values = {
        TS: parse_timestamp(TS),
        POSITION: slot_number(POSITION),
        PRICE: non_negative_number(PRICE),
        RATING: non_negative_number(RATING),
    }
    missing = first_field(required_fields, is_blank)
    invalid = F.coalesce(
        F.col(NON_STRING_ID),
        first_field(RAW_ID_FIELDS, lambda name: F.col(name).rlike(UNICODE_BLANK)),
        first_field(NUMERIC_FIELDS, lambda name: F.col(name).isNotNull() & F.col(typed(name)).isNull()),
    )
    latest = day_end_limit(day, future_tolerance_minutes)
    ts = F.col(typed(TS))
    rules = [
        (~F.col(JSON_OK), MALFORMED_JSON, F.lit(LINE)),
        (missing.isNotNull(), MISSING_FIELD, missing),
        (~F.coalesce(F.col(EVENT_TYPE).isin(list(event_types)), F.lit(False)), UNKNOWN_EVENT_TYPE, F.lit(EVENT_TYPE)),
        (ts.isNull() | (F.unix_micros(ts) < F.lit(midnight_micros(earliest))), BAD_TIMESTAMP, F.lit(TS)),
        (F.unix_micros(ts) > latest, FUTURE_TIMESTAMP, F.lit(TS)),
        (invalid.isNotNull(), INVALID_VALUE, invalid),
    ]
    reason = first_match([(condition, F.lit(code)) for condition, code, _ in rules])
    field = first_match([(condition, at_fault) for condition, _, at_fault in rules])
    return (
        parsed
        .select("*", *[value.alias(typed(name)) for name, value in values.items()])
        .withColumn(REJECT_REASON, reason)
        .withColumn(REJECT_FIELD, field)
        .drop(JSON_OK, NON_STRING_ID, *values)
        .withColumnsRenamed({typed(name): name for name in values})
    )


def classify_lines(checked: DataFrame, seen_event_ids: DataFrame, *, bot_window_minutes: int,
                   bot_max_events_per_window: int, bot_per: Sequence[str] = (USER_ID,)) -> DataFrame:
    """Reasons 7-8 on the lines that passed `check_rows`; every line keeps one row.

    Args:
        checked: output of `check_rows`, persisted (it is read several times here, and
            Spark's optimizer takes tens of seconds on the plan that repeats it inline).
        seen_event_ids: column `event_id`, the events accepted on the look-back days.
        bot_window_minutes: tumbling window length for the per-user rate.
        bot_max_events_per_window: more events than this in one window makes a bot.
        bot_per: what a bot verdict covers: the user (one day's file), or the user and
            `dt` when several days are cleaned at once.

    Returns:
        The rows of `checked` (same columns), with the final `reject_reason` and
        `reject_field`; accepted events have both null.
    """
    rejected = checked.where(F.col(REJECT_REASON).isNotNull())
    # Only survivors take part, so the many null event ids of broken lines never land
    # in one window partition.
    survivors = mark_duplicates(checked.where(F.col(REJECT_REASON).isNull()), seen_event_ids)
    bots = bot_users(survivors.where(F.col(REJECT_REASON).isNull()), window_minutes=bot_window_minutes,
                     max_events=bot_max_events_per_window, per=bot_per)
    return rejected.unionByName(mark_bots(survivors, bots))


def mark_duplicates(survivors: DataFrame, seen_event_ids: DataFrame) -> DataFrame:
    """Reject re-sent events: ids seen on earlier days, and every same-day copy but one.

    The copy kept is the first by (`dt` when several days are cleaned, `ts`, `line`), so
    reruns keep the same one.
    """
    # A multi-day clean keeps the copy of the earliest file day, where a daily clean would have.
    by_file_day = [DT] if DT in survivors.columns else []
    first_delivery = Window.partitionBy(EVENT_ID).orderBy(*by_file_day, TS, LINE)
    seen = seen_event_ids.select(EVENT_ID).distinct().withColumn(_SEEN_BEFORE, F.lit(True))
    duplicate = F.coalesce(F.col(_SEEN_BEFORE), F.lit(False)) | (F.col(_DELIVERY) > 1)  # reads no reject column
    return (
        survivors
        .withColumn(_DELIVERY, F.row_number().over(first_delivery))
        .join(seen, EVENT_ID, "left")  # `seen` is distinct: a join that cannot add rows
        .withColumn(REJECT_REASON, F.when(duplicate, F.lit(DUPLICATE_EVENT)).otherwise(F.col(REJECT_REASON)))
        .withColumn(REJECT_FIELD, F.when(duplicate, F.lit(EVENT_ID)).otherwise(F.col(REJECT_FIELD)))
        .drop(_DELIVERY, _SEEN_BEFORE)
    )


def bot_users(events: DataFrame, *, window_minutes: int, max_events: int,
              per: Sequence[str] = (USER_ID,)) -> DataFrame:
    """Users with more than `max_events` events in some tumbling window (columns `per`:
    `user_id`, and `dt` when several days' files are cleaned together).

    A grouped count, not a window function over users: partial aggregation folds a
    bot's thousands of events into one row per window before the shuffle, so one
    bot cannot pile up in a single partition.
    """
    window = F.floor(F.unix_seconds(F.col(TS)) / F.lit(window_minutes * 60))
    return (
        events
        .groupBy(*per, window.alias(_WINDOW))
        .count()
        .where(F.col("count") > max_events)
        .select(*per)
        .distinct()
    )


def mark_bots(survivors: DataFrame, bots: DataFrame) -> DataFrame:
    """Reject every still-accepted event of the users in `bots`."""
    flagged = bots.withColumn(_IS_BOT, F.lit(True))
    is_bot = F.col(_IS_BOT)
    return (
        survivors
        # A handful of users by construction: broadcast, so no shuffle by user at all.
        .join(F.broadcast(flagged), bots.columns, "left")
        .withColumn(_IS_BOT, F.col(REJECT_REASON).isNull() & F.coalesce(F.col(_IS_BOT), F.lit(False)))
        .withColumn(REJECT_REASON, F.when(is_bot, F.lit(BOT_TRAFFIC)).otherwise(F.col(REJECT_REASON)))
        .withColumn(REJECT_FIELD, F.when(is_bot, F.lit(USER_ID)).otherwise(F.col(REJECT_FIELD)))
        .drop(_IS_BOT)
    )


def accepted_lines(classified: DataFrame) -> DataFrame:
    return classified.where(F.col(REJECT_REASON).isNull())


def rejected_lines(classified: DataFrame, carry: Sequence[str] = ()) -> DataFrame:
    """The rejects table's rows: the original line, the reason and the field at fault
    (and the `carry` columns, such as the `dt` of a multi-day clean)."""
    return classified.where(F.col(REJECT_REASON).isNotNull()).select(LINE, REJECT_REASON, REJECT_FIELD, *carry)
