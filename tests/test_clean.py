"""The clean stage: reject reasons and their precedence, id dictionaries, the job's outputs,
its reconciliation, reruns and failures, and exact agreement with the generator's manifest.

Transforms are tested on tiny inline frames with exact expected values; `run` on a tiny
hand-written lake and on a small generated data set.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe import io
from recpipe.config import load_config
from recpipe.errors import ConfigError, DataError
from recpipe.etl import clean
from recpipe.etl.catalogue import clean_catalogue, index_catalogue
from recpipe.etl.dictionaries import ITEMS, USERS, assign_new_indexes, snapshot_as_of
from recpipe.etl.quality import Outcomes, count_outcomes, reconcile
from recpipe.etl.raw import JSON_OK, parse_lines
from recpipe.etl.rejects import PRECEDENCE, bot_users, check_rows, classify_lines, mark_duplicates
from recpipe.schema import (EVENTS_SCHEMA, FIRST_SEEN, ITEM_ID, ITEM_IDX, LINE, REJECT_FIELD, REJECT_REASON,
                            REJECT_REASONS, REJECTS_SCHEMA, USER_ID, USER_IDX)
from tests.conftest import day_folder, whole_table

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONF = REPO / "conf" / "local.yaml"
D = dt.date(2026, 11, 1)
REQUIRED = ("event_id", "user_id", "item_id", "event_type", "ts")
TYPES = ("impression", "click", "add_to_cart", "purchase", "rating")
DROP = object()  # a field to leave out of a line
EARLIEST = dt.date(1990, 1, 1)


def event_line(**fields) -> str:
    """A valid raw line for day D; keyword arguments replace fields, DROP removes one."""
    record = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click",
              "ts": "2026-11-01T10:00:00.000Z", "session_id": "s1", "request_id": "r1", "position": 2, "device": "ios"}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not DROP}, separators=(",", ":"))


def lines_frame(spark, lines):
    return spark.createDataFrame([(line,) for line in lines], T.StructType([T.StructField(LINE, T.StringType())]))


def checked_rows(spark, lines, day=D, event_types=TYPES, tolerance=60):
    return check_rows(parse_lines(lines_frame(spark, lines)), required_fields=REQUIRED, event_types=event_types,
                      day=day, future_tolerance_minutes=tolerance, earliest=EARLIEST)


def no_ids(spark):
    return spark.createDataFrame([], T.StructType([T.StructField("event_id", T.StringType())]))


def classify(spark, lines, seen=(), bot_max=300, bot_window=10):
    seen_frame = spark.createDataFrame([(e,) for e in seen], "event_id string") if seen else no_ids(spark)
    # Persisted as the clean job persists it: over the bare per-line checks, Spark's
    # optimizer takes some 20 s to plan the classification of even ten lines.
    return classify_lines(checked_rows(spark, lines).persist(), seen_frame, bot_window_minutes=bot_window,
                          bot_max_events_per_window=bot_max)


def outcomes_by_line(frame) -> dict[str, tuple]:
    """line -> (reject_reason, reject_field) for frames whose lines are distinct."""
    rows = frame.select(LINE, REJECT_REASON, REJECT_FIELD).collect()
    assert len(rows) == len({r[LINE] for r in rows})
    return {r[LINE]: (r[REJECT_REASON], r[REJECT_FIELD]) for r in rows}


def outcomes_list(frame) -> list[tuple]:
    return sorted((r[LINE], r[REJECT_REASON] or "", r[REJECT_FIELD] or "") for r in frame.collect())


# --- parsing ---------------------------------------------------------------------------------


def test_parse_lines_keeps_every_line_and_reads_fields_as_text(spark):
    lines = [
        '{"event_id":"e1","ts":1793540712345,"position":3,"price":12.5,"user_id":{"a":[1]}}',
        "", "   ", "null", "42", '"text"', "[1,2]", '[{"event_id":"e2"}]', '{"event_id":"e3"',
        '{"event_id":"e4"} trailing', "{'event_id':'e5'}", '{"price":NaN}', '  {"event_id":"e6"}  ',
    ]
    rows = {r[LINE]: r for r in parse_lines(lines_frame(spark, lines)).collect()}
    assert len(rows) == len(lines)
    first = rows[lines[0]]
    assert first[JSON_OK] is True
    assert (first["event_id"], first["ts"], first["position"], first["price"], first["user_id"]) == \
        ("e1", "1793540712345", "3", "12.5", '{"a":[1]}')
    assert first["item_id"] is None
    assert rows['  {"event_id":"e6"}  '][JSON_OK] is True
    assert [line for line in lines if not rows[line][JSON_OK]] == lines[1:-1]


# --- one reason at a time --------------------------------------------------------------------


def test_malformed_json_for_anything_but_one_object(spark):
    good = event_line()
    bad = ["", "  ", "[1]", "null", good[:-1], good + "x", "<html>502</html>", "{{{}}", good.replace('"', "'")]
    got = outcomes_by_line(checked_rows(spark, [good, *bad]))
    assert got == {good: (None, None), **{line: ("malformed_json", "line") for line in bad}}


def test_two_objects_or_trailing_text_on_one_line_are_malformed_not_their_first_object(spark):
    good = event_line()
    other = event_line(event_id="e2")
    bad = [good + other, good + " " + other, good + "," + other, good + " junk}", good + "}", good + "]}",
           good[:-1] + '}] {"x":1}', good + '{"x":"}"}']
    # brackets and escaped quotes inside strings are text, not structure
    tricky = [event_line(event_id="s1", device='}{"x":1}{'), event_line(event_id="s2", device='a\\"}{['),
              event_line(event_id="s3", device="back\\slash\\"), event_line(event_id="s4", nested={"a": [1, {"b": "}"}]})]
    got = outcomes_by_line(checked_rows(spark, [good, *bad, *tricky]))
    assert got == {**{line: (None, None) for line in (good, *tricky)}, **{line: ("malformed_json", "line") for line in bad}}


def test_epoch_seconds_and_instants_before_the_earliest_day_are_bad_timestamps(spark):
    cases = {
        event_line(event_id="s", ts=1793540712): "bad_timestamp",  # epoch seconds of 2026-11-01
        event_line(event_id="s2", ts="1793540712"): "bad_timestamp",
        event_line(event_id="z", ts=0): "bad_timestamp",
        event_line(event_id="old", ts="1989-12-31T23:59:59.999Z"): "bad_timestamp",
        event_line(event_id="old2", ts="1990-01-01T00:30:00+01:00"): "bad_timestamp",  # 1989-12-31T23:30Z
        event_line(event_id="first", ts="1990-01-01T00:00:00Z"): None,
        event_line(event_id="ms", ts=631152000000): None,  # 1990-01-01T00:00:00Z in milliseconds
    }
    got = outcomes_by_line(checked_rows(spark, list(cases)))
    assert got == {line: ((r, "ts") if r else (None, None)) for line, r in cases.items()}


def test_ids_that_are_not_json_strings_or_blank_to_a_reader_are_invalid_values(spark):
    cases = {
        event_line(event_id="n", user_id=7): "user_id",
        event_line(event_id="f", user_id=7.5): "user_id",
        event_line(event_id="b", item_id=True): "item_id",
        event_line(event_id={"id": 1}): "event_id",
        event_line(event_id="a", session_id=[1, 2]): "session_id",
        event_line(event_id="r", request_id=False): "request_id",
        event_line(event_id="o", user_id={}): "user_id",
        event_line(event_id="zw", user_id="\u200b"): "user_id",  # zero-width space
        event_line(event_id="sp", user_id="\u00a0\u3000\u2028"): "user_id",  # no-break, ideographic, line separator
        event_line(event_id="bom", item_id="\ufeff"): "item_id",
        event_line(event_id="nul", item_id="\u0000\t"): "item_id",
        event_line(event_id="order", user_id=5, position=-1): "user_id",  # ids before the numeric fields
        # strings that look like other JSON values are still strings
        event_line(event_id="s7", user_id="7"): None,
        event_line(event_id="st", user_id="true"): None,
        event_line(event_id="sb", user_id="[x]", item_id="{y}"): None,
        event_line(event_id="in", user_id="u\u200b1"): None,
        event_line(event_id="nd", session_id=None, request_id=DROP): None,  # optional ids may be absent or null
    }
    got = outcomes_by_line(checked_rows(spark, list(cases)))
    assert got == {line: (("invalid_value", f) if f else (None, None)) for line, f in cases.items()}


def test_a_non_string_id_yields_to_reasons_earlier_in_the_order(spark):
    cases = {
        event_line(event_id="t", user_id=7, event_type="view"): ("unknown_event_type", "event_type"),
        event_line(event_id="u", user_id=7, ts="yesterday"): ("bad_timestamp", "ts"),
        event_line(event_id="v", user_id=7, item_id=DROP): ("missing_field", "item_id"),
    }
    assert outcomes_by_line(checked_rows(spark, list(cases))) == cases


def test_missing_field_names_the_first_absent_null_or_blank_required_field(spark):
    cases = {
        event_line(event_id=DROP): "event_id",
        event_line(user_id=None): "user_id",
        event_line(item_id=""): "item_id",
        event_line(event_type="  "): "event_type",
        event_line(ts=DROP, user_id=DROP): "user_id",  # the order of required_fields, not of the line
        event_line(session_id=DROP, device=None, position=DROP): None,  # optional fields may be absent
    }
    got = outcomes_by_line(checked_rows(spark, list(cases)))
    assert got == {line: (("missing_field", field) if field else (None, None)) for line, field in cases.items()}


def test_unknown_event_type_is_exact_and_case_sensitive(spark):
    cases = {event_line(event_type=t): t not in ("click", "purchase") for t in ("click", "purchase", "view", "Click", "click ")}
    got = outcomes_by_line(checked_rows(spark, list(cases), event_types=("click", "purchase")))
    assert got == {line: (("unknown_event_type", "event_type") if bad else (None, None)) for line, bad in cases.items()}


def test_bad_timestamp_accepts_only_epoch_millis_and_iso_with_offset(spark):
    good = {
        1793540712345: dt.datetime(2026, 11, 1, 13, 45, 12, 345000),
        "1793540712345": dt.datetime(2026, 11, 1, 13, 45, 12, 345000),
        "2026-11-01T13:45:12.345+02:00": dt.datetime(2026, 11, 1, 11, 45, 12, 345000),
        "2026-11-01T13:45:12Z": dt.datetime(2026, 11, 1, 13, 45, 12),
        "2026-11-01T01:00:00.5-05:30": dt.datetime(2026, 11, 1, 6, 30, 0, 500000),
    }
    bad = ["yesterday", "2026-13-45T25:00:00Z", "2026-02-30T10:00:00Z", "2026-11-01T10:00:00", "2026-11-01 10:00:00Z",
           "2026-11-01T10:00Z", "2026-11-01T10:00:00+0200", "17/11/2026 10:00", "-1793540712345", "1.79354e12",
           "1793540712345\n", "12345678901234567", "2026-11-01T10:00:00+19:00", True, {"t": 1}]
    lines = {event_line(event_id=f"g{i}", ts=ts): ts for i, ts in enumerate(good)}
    lines.update({event_line(event_id=f"b{i}", ts=ts): ts for i, ts in enumerate(bad)})
    rows = checked_rows(spark, list(lines)).collect()
    got = {r[LINE]: (r[REJECT_REASON], r[REJECT_FIELD], r["ts"]) for r in rows}
    for line, ts in lines.items():
        if any(ts is g for g in good):
            assert got[line] == (None, None, good[ts]), ts
        else:
            assert got[line][:2] == ("bad_timestamp", "ts"), ts


def test_future_timestamp_beyond_end_of_day_plus_tolerance(spark):
    # End of D is 2026-11-02T00:00Z; with 60 minutes tolerance the last allowed instant is 01:00:00.000.
    cases = {
        event_line(event_id="a", ts="2026-11-02T01:00:00.000Z"): None,
        event_line(event_id="b", ts="2026-11-02T01:00:00.001Z"): "future_timestamp",
        event_line(event_id="c", ts="2026-11-02T02:30:00+02:00"): None,  # 00:30 UTC
        event_line(event_id="d", ts=1793674800001): "future_timestamp",  # 2026-11-02T01:00:00.001Z
        event_line(event_id="e", ts="2026-10-30T10:00:00Z"): None,  # late, but not future
    }
    got = outcomes_by_line(checked_rows(spark, list(cases)))
    assert got == {line: ((r, "ts") if r else (None, None)) for line, r in cases.items()}


def test_invalid_value_for_negative_or_non_numeric_position_price_rating(spark):
    cases = {
        event_line(event_id="a", position=-1): "position",
        event_line(event_id="b", position="x"): "position",
        event_line(event_id="c", position=2.5): "position",
        event_line(event_id="d", price=-0.01): "price",
        event_line(event_id="e", price="free"): "price",
        event_line(event_id="f", price="1e400"): "price",  # overflows to infinity
        event_line(event_id="f2", price=0).replace('"price":0', '"price":1e400'): "price",  # as a JSON number too
        event_line(event_id="g", price=[1]): "price",
        event_line(event_id="h", rating=-3): "rating",
        event_line(event_id="i", position=-1, price=-1): "position",  # first field in order position, price, rating
        event_line(event_id="j", position="3", price="12.50", rating=4.5): None,
        event_line(event_id="k", position=3.0, price=0): None,
        event_line(event_id="l", position=None, price=None): None,  # absent values are allowed
    }
    rows = checked_rows(spark, list(cases)).collect()
    got = {r[LINE]: (r[REJECT_REASON], r[REJECT_FIELD]) for r in rows}
    assert got == {line: (("invalid_value", f) if f else (None, None)) for line, f in cases.items()}
    typed = {r["event_id"]: (r["position"], r["price"], r["rating"]) for r in rows}
    assert typed["j"] == (3, 12.5, 4.5) and typed["k"] == (3, 0.0, None)


def test_duplicate_event_keeps_the_earliest_copy_and_rejects_ids_seen_before(spark):
    first = event_line(event_id="e1", ts="2026-11-01T09:00:00Z")
    later = event_line(event_id="e1", ts="2026-11-01T10:00:00Z")
    copies = [event_line(event_id="e2", device=d) for d in ("web", "ios", "android")]  # same ts: smallest line wins
    old = event_line(event_id="e3")
    got = outcomes_list(classify(spark, [later, first, *copies, old, old], seen=("e3", "e9")))
    keep = min(copies)
    expected = [(first, "", ""), (later, "duplicate_event", "event_id"), (keep, "", ""),
                *[(c, "duplicate_event", "event_id") for c in copies if c != keep],
                (old, "duplicate_event", "event_id"), (old, "duplicate_event", "event_id")]
    assert got == sorted(expected)


def test_mark_duplicates_is_deterministic_across_partitionings(spark):
    lines = [event_line(event_id=f"e{i % 7}", device=f"d{i}") for i in range(40)]
    survivors = checked_rows(spark, lines)
    kept = [
        sorted(r[LINE] for r in mark_duplicates(survivors.repartition(n), no_ids(spark)).where(F.col(REJECT_REASON).isNull()).collect())
        for n in (1, 3)
    ]
    assert kept[0] == kept[1] and len(kept[0]) == 7


def test_bot_traffic_rejects_every_event_of_a_user_over_the_limit_in_one_tumbling_window(spark):
    def burst(user, minutes, prefix):
        return [event_line(event_id=f"{prefix}{i}", user_id=user, ts=f"2026-11-01T10:{m:02d}:00Z") for i, m in enumerate(minutes)]

    bot = burst("bot", [0, 1, 2, 3], "b") + [event_line(event_id="b-late", user_id="bot", ts="2026-11-01T22:00:00Z")]
    at_limit = burst("busy", [0, 1, 2], "x")  # exactly the limit: not a bot
    straddling = burst("edge", [8, 9, 10, 11], "y")  # 4 events, but 2 in 10:00-10:10 and 2 in 10:10-10:20
    other = [event_line(event_id="o1", user_id="u1")]
    got = outcomes_by_line(classify(spark, bot + at_limit + straddling + other, bot_max=3, bot_window=10))
    assert got == {**{line: ("bot_traffic", "user_id") for line in bot},
                   **{line: (None, None) for line in at_limit + straddling + other}}


def test_bot_users_counts_only_what_it_is_given(spark):
    rows = checked_rows(spark, [event_line(event_id=f"b{i}", user_id="bot") for i in range(5)])
    assert [r[USER_ID] for r in bot_users(rows, window_minutes=10, max_events=4).collect()] == ["bot"]
    assert bot_users(rows, window_minutes=10, max_events=5).count() == 0


def test_precedence_is_the_contract_order():
    assert PRECEDENCE == REJECT_REASONS


def test_precedence_first_reason_wins(spark):
    cases = {
        '{"event_id":"p1","user_id":"u1","ts":"bad"': "malformed_json",
        event_line(event_id="p2", user_id=DROP, event_type="view", ts="bad"): "missing_field",
        event_line(event_id="p3", event_type="view", ts="bad", price=-1): "unknown_event_type",
        event_line(event_id="p4", ts="bad", price=-1): "bad_timestamp",
        event_line(event_id="p5", ts="2026-11-09T00:00:00Z", price=-1): "future_timestamp",
        # Rejected lines do not count towards the rate: "busy" keeps 2 events, the limit.
        event_line(event_id="p6", user_id="busy", price=-1): "invalid_value",
        event_line(event_id="p7", user_id="busy"): "duplicate_event",  # accepted on an earlier day
        event_line(event_id="p8", user_id="busy", device="x"): None,
        event_line(event_id="p8", user_id="busy", device="y"): "duplicate_event",  # same day, larger line
        event_line(event_id="p9", user_id="busy"): None,
        event_line(event_id="p10", user_id="bot"): "duplicate_event",  # a bot's re-sent event is a duplicate
        event_line(event_id="p11", user_id="bot", device="x"): "bot_traffic",
        event_line(event_id="p12", user_id="bot", device="y"): "bot_traffic",
        event_line(event_id="p13", user_id="bot", device="z"): "bot_traffic",
    }
    got = outcomes_by_line(classify(spark, list(cases), seen=("p7", "p10"), bot_max=2))
    assert {line: reason for line, (reason, _) in got.items()} == cases


def test_checks_never_raise_in_ansi_mode(spark):
    lines = [event_line(ts="2026-02-30T10:00:00Z"), event_line(position="9" * 30), event_line(price="1e999"),
             event_line(ts="99999999999999"), event_line(position=3.7), "{"]
    spark.conf.set("spark.sql.ansi.enabled", "true")
    try:
        got = [r[REJECT_REASON] for r in checked_rows(spark, lines).orderBy(LINE).collect()]
    finally:
        spark.conf.unset("spark.sql.ansi.enabled")
    assert Counter(got) == Counter({"bad_timestamp": 1, "invalid_value": 3, "future_timestamp": 1, "malformed_json": 1})


# --- accounting ---------------------------------------------------------------------------------


def test_count_outcomes_reports_every_reason_and_type_and_late_events(spark):
    lines = [event_line(event_id="a"), event_line(event_id="b", event_type="impression", ts="2026-10-31T23:59:59Z"),
             event_line(event_id="c", ts="2026-11-01T00:00:00Z"), event_line(event_id="a"), "oops", ""]
    outcomes = count_outcomes(classify(spark, lines), day=D, event_types=TYPES)
    assert outcomes.accepted_by_type == {"impression": 1, "click": 2, "add_to_cart": 0, "purchase": 0, "rating": 0}
    assert outcomes.rejected_by_reason == {reason: {"malformed_json": 2, "duplicate_event": 1}.get(reason, 0)
                                           for reason in REJECT_REASONS}
    assert outcomes.late_events == 1
    reconcile(6, outcomes)


def test_reconcile_names_both_numbers():
    outcomes = Outcomes(accepted_by_type={"click": 5}, rejected_by_reason={"malformed_json": 2}, late_events=0)
    with pytest.raises(DataError, match=r"read 8.*accepted 5 \+ rejected 2 = 7"):
        reconcile(8, outcomes)


# --- dictionaries and catalogue -----------------------------------------------------------------


def dictionary(spark, rows, key=USER_ID, index=USER_IDX):
    schema = f"{key} string, {index} int, {FIRST_SEEN} date"
    return spark.createDataFrame(rows, schema)


def test_assign_new_indexes_numbers_new_ids_after_the_largest_in_id_order(spark):
    day0, day1 = dt.date(2026, 10, 30), dt.date(2026, 11, 1)
    existing = dictionary(spark, [("u5", 1, day0), ("u1", 2, day0), ("u9", 7, day0)])
    ids = spark.createDataFrame([("u3",), ("u1",), ("u2",), (None,), ("  ",), ("u3",), ("u0",)], "user_id string")
    got = assign_new_indexes(existing, ids, key=USER_ID, index=USER_IDX, day=day1).collect()
    assert sorted(tuple(r) for r in got) == sorted([
        ("u5", 1, day0), ("u1", 2, day0), ("u9", 7, day0),
        ("u0", 8, day1), ("u2", 9, day1), ("u3", 10, day1),
    ])


def test_assign_new_indexes_starts_at_one_leaving_zero_for_padding(spark):
    empty = dictionary(spark, [])
    ids = spark.createDataFrame([("b",), ("a",)], "user_id string")
    got = assign_new_indexes(empty, ids, key=USER_ID, index=USER_IDX, day=D).collect()
    assert sorted((r[USER_ID], r[USER_IDX]) for r in got) == [("a", 1), ("b", 2)]


def test_assign_new_indexes_numbers_in_id_order_across_partitions(spark):
    """The new ids spread over several sorted partitions are numbered as one sequence."""
    names = [f"u{n:03d}" for n in range(200)]
    ids = spark.createDataFrame([(name,) for name in reversed(names)], "user_id string").repartition(5)
    existing = dictionary(spark, [("u050", 1, D)])
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")  # keep the 4 sorted partitions
    try:
        got = assign_new_indexes(existing, ids, key=USER_ID, index=USER_IDX, day=D).collect()
    finally:
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    new = [name for name in names if name != "u050"]
    assert sorted((r[USER_IDX], r[USER_ID]) for r in got) == [(1, "u050"), *enumerate(new, start=2)]


@pytest.mark.parametrize("rows, message", [
    ([("a", 2), ("b", 3)], "indexes are not dense from 1: 1 is missing (the next is 2, id 'a')"),
    ([("a", 1), ("b", 2), ("c", 5), ("d", 7)], "indexes are not dense from 1: 3 is missing (the next is 5, id 'c')"),
    ([("a", 0), ("b", 1), ("c", 2)], "id 'a' has index 0, below 1 (0 is padding, no id's)"),
], ids=["from-2", "gap", "padding"])
def test_first_violation_names_the_first_missing_index_or_one_below_one(spark, rows, message):
    from recpipe.etl.dictionaries import first_violation

    assert first_violation(dictionary(spark, [(key, index, D) for key, index in rows]), USERS) == message


def test_snapshot_as_of_keeps_ids_known_by_the_day_and_those_it_uses(spark):
    d0, d1, d2 = D, D2, D2 + dt.timedelta(days=1)
    full = dictionary(spark, [("a", 1, d0), ("b", 2, d1), ("c", 3, d2), ("d", 4, d2)])
    used = spark.createDataFrame([("a",), ("c",), ("c",)], "user_id string")
    got = sorted(tuple(r) for r in snapshot_as_of(full, used, key=USER_ID, day=d1).collect())
    assert got == [("a", 1, d0), ("b", 2, d1), ("c", 3, d2)]


def test_catalogue_is_deduplicated_and_indexed(spark):
    raw = spark.createDataFrame(
        [("i2", "c2", "b", "3.5", "t2"), ("i1", "c1", "a", "-1", "t1"), ("i3", " ", " ", "x", "t3"),
         ("i2", "c1", "b", "3.5", "t2"), (None, "c1", "b", "1", "t")],
        "item_id string, category string, brand string, price string, title string")
    raw = raw.unionByName(spark.createDataFrame([("i4", "c3", "b", "2", "t4")], raw.schema))
    items = dictionary(spark, [("i1", 1, D), ("i2", 2, D), ("i3", 3, D)], ITEM_ID, ITEM_IDX)  # i4 unknown: left out
    categories = dictionary(spark, [("c1", 1, D), ("c2", 2, D)], "category", "cat_idx")
    brands = dictionary(spark, [("a", 1, D), ("b", 2, D)], "brand", "brand_idx")
    got = sorted(tuple(r) for r in index_catalogue(clean_catalogue(raw), items, categories, brands).collect())
    assert got == [("i1", 1, "c1", 1, "a", 1, None, "t1"), ("i2", 2, "c2", 2, "b", 2, 3.5, "t2"),
                   ("i3", 3, None, 0, None, 0, None, "t3")]  # a blank brand is none: brand_idx 0


def test_index_events_gives_the_events_schema(spark):
    accepted = classify(spark, [event_line(event_id="a", price=3, rating=4), event_line(event_id="b", user_id="u2")])
    users = dictionary(spark, [("u1", 4, D), ("u2", 9, D)])
    items = dictionary(spark, [("i1", 2, D)], ITEM_ID, ITEM_IDX)
    events = clean.index_events(accepted, users, items)
    assert [(f.name, f.dataType) for f in events.schema.fields] == [(f.name, f.dataType) for f in EVENTS_SCHEMA.fields]
    got = sorted((r["event_id"], r[USER_IDX], r[ITEM_IDX], r["ts"], r["position"], r["price"], r["rating"])
                 for r in events.collect())
    at = dt.datetime(2026, 11, 1, 10)
    assert got == [("a", 4, 2, at, 2, 3.0, 4.0), ("b", 9, 2, at, 2, None, None)]


def test_index_events_fails_loudly_for_an_id_without_index(spark):
    accepted = classify(spark, [event_line(user_id="nobody")])
    with pytest.raises(Exception, match="no user_idx for user_id nobody"):
        clean.index_events(accepted, dictionary(spark, []), dictionary(spark, [("i1", 1, D)], ITEM_ID, ITEM_IDX)).collect()


# --- the job on a tiny hand-written lake ----------------------------------------------------------

D2 = D + dt.timedelta(days=1)
CATALOGUE = [
    {"item_id": "i1", "category": "c2", "brand": "b1", "price": 9.5, "title": "one"},
    {"item_id": "i2", "category": "c1", "brand": "b1", "price": "12", "title": "two"},
    {"item_id": "i3", "brand": "b2", "price": 1, "title": "three"},
]
DAY1 = {
    "a": event_line(event_id="a", user_id="u2", item_id="i1", event_type="impression", ts=1793527200000),  # 10:00Z
    "b": event_line(event_id="b", user_id="u2", item_id="i1", ts="2026-11-01T12:00:01+02:00"),
    "late": event_line(event_id="late", user_id="u1", item_id="i9", ts="2026-10-31T23:59:00Z"),
    "buy": event_line(event_id="buy", user_id="u1", item_id="i2", event_type="purchase", price=12.0),
}
DAY1_REJECTS = {
    "": "malformed_json",
    event_line(event_id="c", ts="soon"): "bad_timestamp",
    DAY1["b"]: "duplicate_event",  # a second copy of b
    **{event_line(event_id=f"bot{i}", user_id="ubot", ts=f"2026-11-01T08:0{i}:00Z"): "bot_traffic" for i in range(4)},
}
DAY2 = {
    "d": event_line(event_id="d", user_id="u1", item_id="i3", ts="2026-11-02T08:00:00Z"),
    "e": event_line(event_id="e", user_id="u0", item_id="i7", ts="2026-11-02T09:00:00Z"),
}
DAY2_REJECTS = {DAY1["a"]: "duplicate_event", event_line(event_id="f", event_type="scroll"): "unknown_event_type"}
TINY_SETTINGS = ["clean.bot_max_events_per_window=3", "clean.events_files_per_day=2"]


def tiny_config(root: Path, *overrides: str):
    return load_config(LOCAL_CONF, [f"paths.root={root}", f"mlflow.tracking_uri=sqlite:///{root}/mlflow/mlflow.db",
                                    *TINY_SETTINGS, *overrides])


def write_gz_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("".join(f"{line}\n" for line in lines))


def write_raw_day(cfg, day: dt.date, lines) -> None:
    write_gz_lines(Path(cfg.table_path("raw_events", day)) / "part-00000.json.gz", lines)


def write_raw_catalogue(cfg, records) -> None:
    write_gz_lines(Path(cfg.table_path("raw_items")) / "part-00000.jsonl.gz", [json.dumps(r) for r in records])


def table_rows(spark, cfg, name: str, day: dt.date) -> list[tuple]:
    return sorted(tuple(r) for r in io.read_day(spark, cfg, name, day).collect())


def checksum(spark, cfg, name: str, day: dt.date) -> str:
    """Order-independent content hash of one day of a table."""
    rows = io.read_day(spark, cfg, name, day).collect()
    return hashlib.sha256("\n".join(sorted(repr(tuple(r)) for r in rows)).encode()).hexdigest()


@pytest.fixture(scope="module")
def tiny_lake(spark, tmp_path_factory):
    """Two cleaned days of hand-written lines; tests that write must copy it first."""
    root = tmp_path_factory.mktemp("tiny") / "root"
    cfg = tiny_config(root)
    write_raw_catalogue(cfg, CATALOGUE)
    write_raw_day(cfg, D, [*DAY1.values(), *DAY1_REJECTS])
    write_raw_day(cfg, D2, [*DAY2.values(), *DAY2_REJECTS])
    reports = {D: clean.run(spark, cfg, D), D2: clean.run(spark, cfg, D2)}
    return cfg, reports


def copy_lake(tiny_lake, tmp_path: Path, *overrides: str):
    cfg, _ = tiny_lake
    root = tmp_path / "root"
    shutil.copytree(cfg.paths.root, root)
    return tiny_config(root, *overrides)


def test_run_writes_events_with_dense_indexes(spark, tiny_lake):
    cfg, _ = tiny_lake
    events = io.read_day(spark, cfg, "events", D)
    assert [(f.name, f.dataType) for f in events.schema.fields] == [(f.name, f.dataType) for f in EVENTS_SCHEMA.fields]
    got = sorted((r["event_id"], r[USER_ID], r[USER_IDX], r[ITEM_ID], r[ITEM_IDX], r["ts"]) for r in events.collect())
    # users u1 < u2; items from the catalogue (i1-i3) and the events (i9), in id order
    assert got == [
        ("a", "u2", 2, "i1", 1, dt.datetime(2026, 11, 1, 10)),
        ("b", "u2", 2, "i1", 1, dt.datetime(2026, 11, 1, 10, 0, 1)),
        ("buy", "u1", 1, "i2", 2, dt.datetime(2026, 11, 1, 10)),
        ("late", "u1", 1, "i9", 4, dt.datetime(2026, 10, 31, 23, 59)),
    ]
    assert sorted(r["dt"] for r in whole_table(spark, cfg, "events").select("dt").distinct().collect()) == [D, D2]


def test_run_writes_every_reject_with_its_original_line(spark, tiny_lake):
    cfg, _ = tiny_lake
    rejects = io.read_day(spark, cfg, "rejects", D)
    assert [f.name for f in rejects.schema.fields] == [f.name for f in REJECTS_SCHEMA.fields]
    got = sorted((r[LINE], r[REJECT_REASON]) for r in rejects.collect())
    assert got == sorted(DAY1_REJECTS.items())
    day2 = sorted((r[LINE], r[REJECT_REASON], r[REJECT_FIELD]) for r in io.read_day(spark, cfg, "rejects", D2).collect())
    assert day2 == sorted([(DAY1["a"], "duplicate_event", "event_id"),
                           (event_line(event_id="f", event_type="scroll"), "unknown_event_type", "event_type")])


def test_dictionaries_are_append_only_snapshots(spark, tiny_lake):
    cfg, _ = tiny_lake
    assert table_rows(spark, cfg, "dim_users", D) == [("u1", 1, D), ("u2", 2, D)]
    assert table_rows(spark, cfg, "dim_users", D2) == [("u0", 3, D2), ("u1", 1, D), ("u2", 2, D)]
    assert table_rows(spark, cfg, "dim_items", D2) == [("i1", 1, D), ("i2", 2, D), ("i3", 3, D), ("i7", 5, D2), ("i9", 4, D)]
    assert table_rows(spark, cfg, "dim_categories", D2) == [("c1", 1, D), ("c2", 2, D)]
    assert table_rows(spark, cfg, "dim_brands", D2) == [("b1", 1, D), ("b2", 2, D)]
    assert sorted((r["event_id"], r[USER_IDX], r[ITEM_IDX]) for r in io.read_day(spark, cfg, "events", D2).collect()) == \
        [("d", 1, 3), ("e", 3, 5)]


def test_catalogue_snapshot_has_item_category_and_brand_indexes(spark, tiny_lake):
    cfg, _ = tiny_lake
    assert table_rows(spark, cfg, "catalogue", D) == [
        ("i1", 1, "c2", 2, "b1", 1, 9.5, "one"), ("i2", 2, "c1", 1, "b1", 1, 12.0, "two"),
        ("i3", 3, None, 0, "b2", 2, 1.0, "three")]


def test_quality_report_is_written_and_logged_to_mlflow(spark, tiny_lake):
    import mlflow

    from recpipe.tracking import tracking_uri

    cfg, reports = tiny_lake
    expected = {
        "date": "2026-11-01", "lines_read": 11, "accepted": 4, "rejected": 7,
        "rejected_by_reason": {reason: {"malformed_json": 1, "bad_timestamp": 1, "duplicate_event": 1,
                                        "bot_traffic": 4}.get(reason, 0) for reason in REJECT_REASONS},
        "accepted_by_type": {"impression": 1, "click": 2, "add_to_cart": 0, "purchase": 1, "rating": 0},
        "late_events": 1, "distinct_users": 2, "distinct_items": 3,
        "new_ids": {"users": 2, "items": 4, "categories": 2, "brands": 2}, "catalogue_items": 3, "quarantined_files": [],
    }
    assert reports[D] == expected
    written = Path(day_folder(cfg, "quality", D)) / "quality.json"
    assert json.loads(written.read_text()) == expected
    assert reports[D2]["new_ids"] == {"users": 1, "items": 1, "categories": 0, "brands": 0}

    client = mlflow.MlflowClient(tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("recpipe-etl").experiment_id],
                              filter_string="tags.date = '2026-11-01' and tags.stage = 'clean'")
    assert [r.info.run_name for r in runs] == ["clean-2026-11-01"]
    run = runs[0]
    assert run.data.metrics["lines_read"] == 11 and run.data.metrics["rejected_bot_traffic"] == 4
    assert run.data.metrics["late_events"] == 1 and run.data.metrics["new_items"] == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"quality.json", "config.yaml"} <= artifacts
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quality.json")
    assert logged == expected
    config = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
    assert "bot_max_events_per_window: 3" in config


def test_a_write_failing_mid_job_leaves_the_previous_day_intact(spark, tiny_lake, tmp_path, monkeypatch):
    cfg = copy_lake(tiny_lake, tmp_path)
    before = {name: checksum(spark, cfg, name, D) for name in ("events", "rejects")}
    index_events = clean.index_events

    def failing_on_one_row(accepted, users, items, **options):
        events = index_events(accepted, users, items, **options)
        return events.withColumn("event_type", F.when(F.col("event_id") == "buy", F.raise_error(F.lit("injected failure")))
                                 .otherwise(F.col("event_type")))

    monkeypatch.setattr(clean, "index_events", failing_on_one_row)
    with pytest.raises(Exception, match="injected failure"):
        clean.run(spark, cfg, D)
    assert {name: checksum(spark, cfg, name, D) for name in ("events", "rejects")} == before
    assert whole_table(spark, cfg, "events").count() == 6  # both days, nothing staged is visible


def test_a_reconciliation_mismatch_stops_the_job_before_any_write(spark, tiny_lake, tmp_path, monkeypatch):
    cfg = copy_lake(tiny_lake, tmp_path)
    day3 = D2 + dt.timedelta(days=1)
    write_raw_day(cfg, day3, [event_line(event_id="x", user_id="u8", ts="2026-11-03T01:00:00Z"), "junk"])
    classify = clean.classify_lines
    monkeypatch.setattr(clean, "classify_lines", lambda *a, **k: classify(*a, **k).where(F.col(LINE) != "junk"))
    with pytest.raises(DataError, match=r"read 2, but accepted 1 \+ rejected 0 = 1"):
        clean.run(spark, cfg, day3)
    for name in ("events", "rejects", "dim_users", "dim_items", "dim_categories", "dim_brands", "catalogue", "quality"):
        assert not io.table_exists(cfg, name, day3), name


def test_the_job_persists_its_lines_at_the_configured_level_and_refuses_an_unknown_one(spark, tiny_lake, tmp_path):
    # DISK_ONLY by default: with a local master the cached lines would share the driver's heap
    # with every task, and MEMORY_AND_DISK ran out of a 4g heap on two days of 2.7 M lines.
    lines = lines_frame(spark, [event_line()]).withColumn("dt", F.lit(D))
    for name, level in (("DISK_ONLY", StorageLevel.DISK_ONLY), ("MEMORY_AND_DISK", StorageLevel.MEMORY_AND_DISK)):
        cfg = copy_lake(tiny_lake, tmp_path / name, *([] if name == "DISK_ONLY" else [f"spark.persist_level={name}"]))
        checked, classified = clean.classify(spark, cfg, lines, first=D, by_file_day=True)
        try:
            assert (checked.storageLevel, classified.storageLevel) == (level, level), name
            assert classified.count() == 1
        finally:
            checked.unpersist()
            classified.unpersist()
    cfg = copy_lake(tiny_lake, tmp_path / "bad", "spark.persist_level=MEMORY")
    def files_and_times():
        return sorted((str(f), f.stat().st_mtime_ns) for f in Path(cfg.paths.root).rglob("*") if f.is_file())

    before = files_and_times()
    with pytest.raises(ConfigError, match="spark.persist_level must be one of DISK_ONLY, MEMORY_AND_DISK, .*'MEMORY'"):
        clean.run(spark, cfg, D2)
    assert files_and_times() == before  # refused before anything under the root was written


def test_persisted_frames_are_cached_without_column_encoding_unless_the_profile_asks(spark, make_config):
    # Encoding the cached columns was a quarter of clean's CPU at 1 M lines (docs/benchmarks.md).
    from recpipe.spark import session_settings

    key = "spark.sql.inMemoryColumnarStorage.compressed"
    assert spark.conf.get(key) == "false"  # the suite's session, built by get_spark from the local profile
    assert session_settings(make_config())[key] == "false"
    assert session_settings(make_config("spark.cache_compressed=true"))[key] == "true"


def test_a_day_with_nothing_accepted_replaces_stale_events(spark, tiny_lake, tmp_path):
    cfg = copy_lake(tiny_lake, tmp_path)
    write_raw_day(cfg, D2, ["garbage", "{"])
    report = clean.run(spark, cfg, D2)
    assert report["accepted"] == 0 and report["rejected_by_reason"]["malformed_json"] == 2
    assert not io.table_exists(cfg, "events", D2)
    assert table_rows(spark, cfg, "rejects", D2) == [("garbage", "malformed_json", "line"), ("{", "malformed_json", "line")]
    assert io.table_exists(cfg, "events", D)


def test_cleaning_a_past_day_again_numbers_nothing_new(spark, tiny_lake, tmp_path):
    cfg = copy_lake(tiny_lake, tmp_path)
    tables = ("events", "rejects", "dim_users", "dim_items", "dim_categories", "dim_brands", "catalogue")
    before = {name: checksum(spark, cfg, name, D) for name in tables}
    # The catalogue has listed a new item since: D's outputs stay as they were.
    write_raw_catalogue(cfg, [*CATALOGUE, {"item_id": "i8", "category": "c9", "brand": "b", "price": 1, "title": "t"}])
    clean.run(spark, cfg, D)
    assert {name: checksum(spark, cfg, name, D) for name in tables} == before
    # A user D's events use but no snapshot knows would need an index the newer snapshot lacks.
    write_raw_day(cfg, D, [*DAY1.values(), event_line(event_id="n", user_id="u-new")])
    with pytest.raises(DataError, match=r"dim_users: 1 new id\(s\) on 2026-11-01, but the newest snapshot is dt=2026-11-02"):
        clean.run(spark, cfg, D)
    assert {name: checksum(spark, cfg, name, D) for name in tables} == before


def test_missing_raw_day_is_an_error_naming_it(spark, make_config):
    cfg = make_config()
    with pytest.raises(DataError, match="no raw events for 2026-11-01: .*raw/events/dt=2026-11-01"):
        clean.run(spark, cfg, D)


@pytest.mark.parametrize("fields, message", [
    ("[event_id, user_id, item_id, event_type]", "must include ts"),
    ("[event_id, user_id, item_id, event_type, ts, colour]", "colour not a raw event field"),
])
def test_required_fields_are_checked(spark, make_config, fields, message):
    with pytest.raises(ConfigError, match=message):
        clean.run(spark, make_config(f"clean.required_fields={fields}"), D)


def test_a_negative_parse_partitions_is_refused_naming_the_key(spark, make_config):
    with pytest.raises(ConfigError, match=r"clean.parse_partitions must be 0 \(the session's cores\) or more, got -1"):
        clean.run(spark, make_config("clean.parse_partitions=-1"), D)


# --- the job on generated data ----------------------------------------------------------------

GENERATED = [
    "generate.users=1500", "generate.items=400", "generate.categories=10", "generate.days=3",
    "generate.late_rate=0.02", "generate.bot_events_per_hour=3000",
    "generate.rate_malformed_json=0.008", "generate.rate_missing_field=0.008",
    "generate.rate_unknown_event_type=0.005", "generate.rate_bad_timestamp=0.005",
    "generate.rate_future_timestamp=0.005", "generate.rate_invalid_value=0.006",
    "generate.rate_duplicate_same_day=0.008", "generate.rate_duplicate_previous_day=0.006",
]
SNAPSHOT_TABLES = ("events", "rejects", "dim_users", "dim_items", "dim_categories", "dim_brands", "catalogue")


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    """Three generated days cleaned in order, with each day's outputs' checksums taken
    right after its own run and again after all three."""
    from recpipe.generate import run as generate

    root = tmp_path_factory.mktemp("generated") / "root"
    cfg = load_config(LOCAL_CONF, [f"paths.root={root}", f"mlflow.tracking_uri=sqlite:///{root}/mlflow/mlflow.db",
                                   *GENERATED])
    manifest = generate(cfg)
    days = [dt.date.fromisoformat(d) for d in sorted(manifest["days"])]
    reports, sums_after_own_run = {}, {}
    for day in days:
        reports[day] = clean.run(spark, cfg, day)
        sums_after_own_run[day] = {name: checksum(spark, cfg, name, day) for name in SNAPSHOT_TABLES}
    return cfg, manifest, days, reports, sums_after_own_run


@pytest.mark.generate
@pytest.mark.slow
def test_counts_equal_the_manifest_exactly(generated):
    cfg, manifest, days, reports, _ = generated
    for day in days:
        planted, report = manifest["days"][day.isoformat()], reports[day]
        assert report["rejected_by_reason"] == {k: planted["faults"][k] for k in REJECT_REASONS}, day
        assert all(n > 0 for n in report["rejected_by_reason"].values()), day  # every kind was planted
        assert report["accepted"] == planted["clean_events"], day
        assert {k: v for k, v in report["accepted_by_type"].items() if v} == \
            {k: v for k, v in planted["clean_by_type"].items() if v}, day
        assert report["late_events"] == planted["late_events"], day
        assert report["lines_read"] == planted["lines"] == report["accepted"] + report["rejected"], day
    assert sum(reports[d]["late_events"] for d in days[1:]) > 0


def python_instant(value) -> dt.datetime | None:
    """An independent reading of the timestamp contract: epoch millis or ISO-8601 with an offset."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc)
    if isinstance(value, str) and value.isdigit():
        return dt.datetime.fromtimestamp(int(value) / 1000, dt.timezone.utc)
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T":
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else None
    return None


@pytest.mark.generate
@pytest.mark.slow
def test_every_reject_is_what_its_reason_says(spark, generated):
    """Re-check each reject's reason from its original line with plain Python."""
    cfg, manifest, days, _, _ = generated
    for day in days:
        day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
        bots = set()
        for row in io.read_day(spark, cfg, "rejects", day).collect():
            line, reason, field = row[LINE], row[REJECT_REASON], row[REJECT_FIELD]
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if reason == "malformed_json":
                assert not isinstance(record, dict), line
                continue
            assert isinstance(record, dict), line
            if reason == "missing_field":
                assert record.get(field) in (None, ""), line
            elif reason == "unknown_event_type":
                assert record["event_type"] not in TYPES, line
            elif reason == "bad_timestamp":
                assert python_instant(record["ts"]) is None, line
            elif reason == "future_timestamp":
                assert python_instant(record["ts"]) > day_end + dt.timedelta(minutes=60), line
            elif reason == "invalid_value":
                assert float(record[field]) < 0, line
            elif reason == "bot_traffic":
                bots.add(record["user_id"])
        assert len(bots) == manifest["days"][day.isoformat()]["bot_users"], day


@pytest.mark.generate
@pytest.mark.slow
def test_duplicates_are_copies_of_accepted_events(spark, generated):
    cfg, _, days, _, _ = generated
    for i, day in enumerate(days):
        window = days[max(0, i - cfg.clean.dedup_lookback_days): i + 1]
        accepted = {r["event_id"] for d in window for r in io.read_day(spark, cfg, "events", d).select("event_id").collect()}
        duplicates = io.read_day(spark, cfg, "rejects", day).where(F.col(REJECT_REASON) == "duplicate_event").collect()
        assert duplicates and all(json.loads(r[LINE])["event_id"] in accepted for r in duplicates), day


@pytest.mark.generate
@pytest.mark.slow
def test_rerunning_a_day_gives_identical_outputs_and_later_days_leave_it_alone(spark, generated):
    cfg, _, days, reports, sums_after_own_run = generated
    final = {day: {name: checksum(spark, cfg, name, day) for name in SNAPSHOT_TABLES} for day in days}
    assert final == sums_after_own_run  # running D+1 (and D+2) did not change D
    middle = days[1]  # rerun after the day that follows it was cleaned
    report = clean.run(spark, cfg, middle)
    assert report == reports[middle]
    assert json.loads((Path(day_folder(cfg, "quality", middle)) / "quality.json").read_text()) == reports[middle]
    assert {day: {name: checksum(spark, cfg, name, day) for name in SNAPSHOT_TABLES} for day in days} == final


@pytest.mark.generate
@pytest.mark.slow
def test_id_dictionaries_never_reassign_an_index(spark, generated):
    cfg, _, days, _, _ = generated
    for spec in (USERS, ITEMS):
        snapshots = [dict((r[0], r[1]) for r in table_rows(spark, cfg, spec.table, day)) for day in days]
        for earlier, later in zip(snapshots, snapshots[1:]):
            assert {k: later[k] for k in earlier} == earlier  # every id keeps its index
            assert len(later) > len(earlier) or spec is ITEMS
        final = snapshots[-1]
        assert sorted(final.values()) == list(range(1, len(final) + 1))  # dense, 0 reserved
    users_by_day = [{r[USER_ID] for r in io.read_day(spark, cfg, "events", day).select(USER_ID).distinct().collect()}
                    for day in days]
    assert users_by_day[0] & users_by_day[1] and users_by_day[1] - users_by_day[0]  # returning and new users
    for day in days:
        events = io.read_day(spark, cfg, "events", day)
        users = io.read_day(spark, cfg, "dim_users", day)
        assert events.join(users, [USER_ID, USER_IDX], "left_anti").count() == 0, day


# --- several days in one job (the whole-history run) ----------------------------------------------

def rows_by_day(spark, cfg, name: str, columns: tuple) -> dict:
    frame = whole_table(spark, cfg, name)
    return {day: sorted(tuple(r[c] for c in columns) for r in frame.where(F.col("dt") == day).collect())
            for day in (D, D2)}


def test_run_range_gives_each_file_day_what_a_daily_clean_gives(spark, tiny_lake, tmp_path):
    daily_cfg, daily_reports = tiny_lake
    cfg = tiny_config(tmp_path / "range")
    write_raw_catalogue(cfg, CATALOGUE)
    write_raw_day(cfg, D, [*DAY1.values(), *DAY1_REJECTS])
    write_raw_day(cfg, D2, [*DAY2.values(), *DAY2_REJECTS])
    report = clean.run_range(spark, cfg, D, D2)

    # Indexes differ (one numbering for the range), everything else matches day by day:
    # the late event stays in its file's day, the re-sent copy of "a" in D2's file is the
    # duplicate, bots and future timestamps are judged against their own file's day.
    event_columns = ("event_id", USER_ID, ITEM_ID, "ts")
    reject_columns = (LINE, REJECT_REASON, REJECT_FIELD)
    assert rows_by_day(spark, cfg, "events", event_columns) == rows_by_day(spark, daily_cfg, "events", event_columns)
    assert rows_by_day(spark, cfg, "rejects", reject_columns) == rows_by_day(spark, daily_cfg, "rejects", reject_columns)
    for key in ("lines_read", "accepted", "rejected", "late_events"):
        assert report[key] == sum(r[key] for r in daily_reports.values()), key
    summed = sum((Counter(r["rejected_by_reason"]) for r in daily_reports.values()), Counter())
    assert report["rejected_by_reason"] == {reason: summed[reason] for reason in REJECT_REASONS}
    assert (report["first_date"], report["date"]) == (D.isoformat(), D2.isoformat())
    # one snapshot of each dictionary, dated the range's last day, numbering every id once
    assert clean.raw_days(cfg) == [D, D2]
    assert io.partition_days(cfg, "dim_users") == [D2]
    assert [r[:2] for r in table_rows(spark, cfg, "dim_users", D2)] == [("u0", 1), ("u1", 2), ("u2", 3)]


def test_run_range_bot_verdict_covers_only_the_file_day(spark):
    lines = [event_line(event_id=f"x{i}", user_id="u9", ts=f"2026-11-01T08:0{i}:00Z") for i in range(4)]
    lines.append(event_line(event_id="next", user_id="u9", ts="2026-11-02T09:00:00Z"))
    days = [D] * 4 + [D2]
    checked = check_rows(parse_lines(spark.createDataFrame(list(zip(lines, days)), f"{LINE} string, dt date")),
                         required_fields=REQUIRED, event_types=TYPES, day=None, future_tolerance_minutes=60,
                         earliest=EARLIEST)
    classified = classify_lines(checked.persist(), no_ids(spark), bot_window_minutes=10, bot_max_events_per_window=3,
                                bot_per=(USER_ID, "dt"))
    assert {r["event_id"]: r[REJECT_REASON] for r in classified.collect()} == {
        "x0": "bot_traffic", "x1": "bot_traffic", "x2": "bot_traffic", "x3": "bot_traffic", "next": None}


def test_run_range_future_timestamp_is_judged_against_each_line_s_file_day(spark):
    line = event_line(event_id="f", ts="2026-11-02T05:00:00Z")  # 5 h after the end of D, 19 h before D2's
    frame = spark.createDataFrame([(line, D), (line, D2)], f"{LINE} string, dt date")
    checked = check_rows(parse_lines(frame), required_fields=REQUIRED, event_types=TYPES, day=None,
                         future_tolerance_minutes=60, earliest=EARLIEST)
    assert sorted((r["dt"], r[REJECT_REASON]) for r in checked.collect()) == [(D, "future_timestamp"), (D2, None)]


def test_run_range_without_raw_days_names_the_range(spark, tmp_path):
    cfg = tiny_config(tmp_path / "empty")
    write_raw_catalogue(cfg, CATALOGUE)
    write_raw_day(cfg, D, [DAY1["a"]])
    with pytest.raises(DataError, match="no raw events from 2026-12-01 to 2026-12-02"):
        clean.run_range(spark, cfg, dt.date(2026, 12, 1), dt.date(2026, 12, 2))


# --- dictionary invariants ---------------------------------------------------------------------

D3 = D2 + dt.timedelta(days=1)


def replace_snapshot(cfg, table: str, day: dt.date, rows) -> None:
    """Overwrite one snapshot with `rows` (id, index, first_seen), as a bad restore would
    (None: delete its folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(day_folder(cfg, table, day))
    shutil.rmtree(folder)
    if rows is None:  # the folder deleted outright, its pointer left as it was
        return
    folder.mkdir()
    if rows:
        key = {"dim_users": USER_ID, "dim_items": ITEM_ID}[table]
        index = {"dim_users": USER_IDX, "dim_items": ITEM_IDX}[table]
        ids, indexes, seen = zip(*rows)
        pq.write_table(pa.table({key: pa.array(ids, pa.string()), index: pa.array(indexes, pa.int32()),
                                 FIRST_SEEN: pa.array(seen, pa.date32())}), folder / "part-00000.parquet")


@pytest.mark.parametrize("table, rows, message", [
    ("dim_users", [], "dim_users dt=2026-11-02: the snapshot is empty"),
    ("dim_users", [("u0", 3, D2), ("u1", 1, D), ("u2", 1, D)], "dim_users dt=2026-11-02: index 1 is given to 2 ids (u1, u2)"),
    ("dim_users", [("u0", 3, D2), ("u1", 1, D), ("u1", 2, D)], "dim_users dt=2026-11-02: id 'u1' has 2 indexes (1, 2)"),
    ("dim_users", [("u0", 4, D2), ("u1", 1, D), ("u2", 2, D)], "dim_users dt=2026-11-02: indexes are not dense from 1: "
                                                               "3 is missing (the next is 4, id 'u0')"),
    ("dim_users", [("u0", 3, D2), ("u9", 1, D), ("u2", 2, D)], "dim_users dt=2026-11-02: lacks id 'u1' (index 1 on "
                                                               "dt=2026-11-01)"),
    ("dim_users", [("u0", 3, D2), ("u1", 2, D), ("u2", 1, D)], "dim_users dt=2026-11-02: gives id 'u1' index 2 (index 1 "
                                                               "on dt=2026-11-01)"),
    ("dim_users", None, "dim_users dt=2026-11-02: the committed snapshot"),
], ids=["emptied", "index-twice", "id-twice", "gap", "old-id-missing", "re-indexed", "folder-deleted"])
def test_a_broken_newest_dictionary_stops_clean_before_it_writes_anything(spark, tiny_lake, tmp_path, table, rows,
                                                                         message):
    from recpipe.etl.dictionaries import DictionaryError

    cfg = copy_lake(tiny_lake, tmp_path)
    replace_snapshot(cfg, table, D2, rows)
    write_raw_day(cfg, D3, [event_line(event_id="g", user_id="u5", ts="2026-11-03T08:00:00Z")])
    with pytest.raises(DictionaryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clean.run(spark, cfg, D3)
    assert not any(io.table_exists(cfg, name, D3) for name in ("events", "rejects", "dim_users", "dim_items", "catalogue"))


def test_readers_downstream_check_the_dictionary_they_read(spark, tiny_lake, tmp_path):
    from recpipe.etl.dictionaries import DictionaryError
    from recpipe.etl.vocabulary import read_vocabulary

    cfg = copy_lake(tiny_lake, tmp_path)
    replace_snapshot(cfg, "dim_items", D2, [("i1", 1, D), ("i2", 1, D)])
    with pytest.raises(DictionaryError, match="dim_items dt=2026-11-02: index 1 is given to 2 ids"):
        read_vocabulary(spark, cfg, D2)


@pytest.mark.parametrize("setting, tasks", [("0", 2), ("3", 3)], ids=["the-cores", "set"])
def test_a_days_single_gz_file_is_parsed_by_several_tasks_with_every_line_kept(spark, tmp_path, setting, tasks):
    cfg = tiny_config(tmp_path / "root", f"clean.parse_partitions={setting}")
    lines = [event_line(event_id=f"e{n}") for n in range(40)] + ["not json", "not json", ""]
    write_raw_day(cfg, D, lines)
    read, quarantined = clean.read_day_lines(spark, cfg, D)
    assert quarantined == []
    assert read.rdd.getNumPartitions() == tasks  # one .gz file is one task as read; local[2] has 2 cores
    assert Counter(r[LINE] for r in read.collect()) == Counter(lines)


def test_dictionaries_stacked_are_each_numbered_after_their_own_largest_index(spark):
    from recpipe.etl.dictionaries import CATEGORIES, number_new_ids, stacked, stacked_ids, unstacked

    users = dictionary(spark, [("u5", 1, D), ("u1", 2, D)])
    items = dictionary(spark, [("i1", 1, D), ("i2", 2, D), ("i3", 3, D), ("i4", 4, D)], key=ITEM_ID, index=ITEM_IDX)
    categories = spark.createDataFrame([], CATEGORIES.schema)
    new_ids = {USERS: spark.createDataFrame([("u3",), ("u1",), ("u0",)], "user_id string"),
               ITEMS: spark.createDataFrame([("i0",), ("i9",), ("",)], "item_id string"),
               CATEGORIES: spark.createDataFrame([("c2",), ("c1",)], "category string")}
    numbered = number_new_ids(stacked({USERS: users, ITEMS: items, CATEGORIES: categories}), stacked_ids(new_ids),
                              day=D2)
    assert sorted(tuple(r) for r in unstacked(numbered, USERS).collect()) == [
        ("u0", 3, D2), ("u1", 2, D), ("u3", 4, D2), ("u5", 1, D)]
    assert sorted(tuple(r)[:2] for r in unstacked(numbered, ITEMS).collect()) == [
        ("i0", 5), ("i1", 1), ("i2", 2), ("i3", 3), ("i4", 4), ("i9", 6)]
    assert sorted(tuple(r)[:2] for r in unstacked(numbered, CATEGORIES).collect()) == [("c1", 1), ("c2", 2)]
