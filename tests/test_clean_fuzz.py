"""Fuzzing the cleaner: whatever the lines hold, it never raises and loses or invents none.

Each example is a small raw file of random lines: events with random field types
(numbers where strings belong, nested objects, arrays, nulls, unicode), truncated
events, JSON that is not an object, free text, blank lines and exact re-sends. The
cleaner must classify every line read exactly once and reconcile.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recpipe.etl.quality import count_outcomes, reconcile
from recpipe.etl.raw import parse_lines, read_raw_lines
from recpipe.etl.rejects import check_rows, classify_lines
from recpipe.schema import EVENT_ID, EVENT_TYPE, EVENTS_SCHEMA, LINE, REJECT_FIELD, REJECT_REASON, REJECT_REASONS, TS

pytestmark = [pytest.mark.spark, pytest.mark.slow]

D = dt.date(2026, 11, 1)
REQUIRED = ("event_id", "user_id", "item_id", "event_type", "ts")
TYPES = ("impression", "click", "add_to_cart", "purchase", "rating")
SEEN_BEFORE = ("e2",)  # accepted "on an earlier day"
DROP = object()

# Characters a line cannot hold: line breaks end it, and a byte-order mark at the start of
# a file is the reader's business, not the cleaner's.
LINE_TEXT = st.text(alphabet=st.characters(exclude_characters="\n\r\ufeff", exclude_categories=("Cs",)), max_size=40)
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | LINE_TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(LINE_TEXT, inner, max_size=3),
                           max_leaves=6)
TIMESTAMPS = st.sampled_from([
    "2026-11-01T10:00:00.000Z", "2026-11-01T23:59:59.999+02:00", "2026-10-31T23:00:00-05:00", "2026-11-09T00:00:00Z",
    "2026-13-45T25:00:00Z", 1793527200000, "1793527200000", 99999999999999999, "yesterday", "",
])


def field(values) -> st.SearchStrategy:
    """Mostly plausible values for a field, sometimes anything JSON can hold, or nothing."""
    return st.one_of(values, values, values, JSON_VALUES, st.just(DROP))


RECORDS = st.fixed_dictionaries({
    "event_id": field(st.sampled_from(["e1", "e2", "e3", "e4", "\u00e9v\u00e9nement"])),
    "user_id": field(st.sampled_from(["u1", "u2", "\u7528\u6237"])),
    "item_id": field(st.sampled_from(["i1", "i2"])),
    "event_type": field(st.sampled_from([*TYPES, "view", "Click"])),
    "ts": field(TIMESTAMPS),
    "session_id": field(LINE_TEXT),
    "request_id": field(LINE_TEXT),
    "position": field(st.integers(-2, 10) | st.sampled_from(["3", "3.0", "2.5", "x"])),
    "device": field(st.sampled_from(["ios", "web"])),
    "price": field(st.floats(-10, 100) | st.sampled_from(["12.5", "1e400", "free"])),
    "rating": field(st.floats(-1, 5)),
})


@st.composite
def event_lines(draw) -> str:
    record = {k: v for k, v in draw(RECORDS).items() if v is not DROP}
    line = json.dumps(record, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # cut short, as a crashed collector leaves it
        line = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
    return line


LINES = st.one_of(
    event_lines(), event_lines(), event_lines(), event_lines(),
    LINE_TEXT,
    st.sampled_from(["", "   ", "\t", "null", "[]", "{}", "{", "}"]),
    JSON_VALUES.map(json.dumps),
)


@st.composite
def batches(draw) -> list[str]:
    """A small file's lines, some of them sent twice."""
    lines = draw(st.lists(LINES, min_size=1, max_size=14))
    resent = draw(st.lists(st.sampled_from(lines), max_size=3))
    return draw(st.permutations(lines + resent))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz"), itertools.count()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lines=batches())
def test_every_line_ends_in_exactly_one_outcome(spark, fuzz_dir, lines):
    folder, counter = fuzz_dir
    day_dir = folder / f"example-{next(counter)}"
    day_dir.mkdir()
    with gzip.open(day_dir / "part-00000.json.gz", "wt", encoding="utf-8") as out:
        out.write("".join(f"{line}\n" for line in lines))

    checked = check_rows(parse_lines(read_raw_lines(spark, str(day_dir))), required_fields=REQUIRED, event_types=TYPES,
                         day=D, future_tolerance_minutes=60)
    seen = spark.createDataFrame([(e,) for e in SEEN_BEFORE], f"{EVENT_ID} string")
    classified = classify_lines(checked, seen, bot_window_minutes=10, bot_max_events_per_window=3).persist()
    try:
        rows = classified.collect()
        outcomes = count_outcomes(classified, day=D, event_types=TYPES)
    finally:
        classified.unpersist()

    assert Counter(r[LINE] for r in rows) == Counter(lines)  # nothing lost, nothing invented
    reconcile(len(lines), outcomes)
    assert {r[REJECT_REASON] for r in rows} <= {None, *REJECT_REASONS}
    accepted = [r for r in rows if r[REJECT_REASON] is None]
    assert outcomes.accepted == len(accepted)
    for r in accepted:  # what the events table requires of an accepted event
        assert r[REJECT_FIELD] is None and r[EVENT_TYPE] in TYPES and r[TS] is not None
        assert all(r[f.name] is not None for f in EVENTS_SCHEMA.fields if not f.nullable and f.name in r.asDict())
    assert len({r[EVENT_ID] for r in accepted}) == len(accepted)  # one copy of each event at most
    assert not {r[EVENT_ID] for r in accepted} & set(SEEN_BEFORE)
