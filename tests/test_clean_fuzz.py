"""Fuzzing the cleaner: whatever the lines hold, it never raises and loses or invents none.

Each example is one raw day file of random lines, cleaned by the whole clean stage
(`clean.run`: file check, parse, reasons, dictionaries, every write, the report): events
with random field types (numbers, booleans, objects and arrays where strings belong,
nulls, unicode), epoch seconds, truncated events, two objects on one line, an object
followed by junk, duplicate keys, JSON that is not an object, free text, blank lines,
invalid UTF-8 bytes, NUL characters, very long lines, very deep nesting and exact
re-sends. The written tables must hold every line read exactly once:
`lines_read == accepted + sum(rejected)`, events ∪ rejects == the file's lines.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recpipe import io
from recpipe.config import load_config
from recpipe.etl import clean
from recpipe.schema import (
    EVENT_ID,
    EVENT_TYPE,
    EVENTS_SCHEMA,
    ITEM_IDX,
    LINE,
    REJECT_REASON,
    REJECT_REASONS,
    TS,
    USER_IDX,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

D = dt.date(2026, 11, 1)
LOCAL_CONF = Path(__file__).resolve().parent.parent / "conf" / "local.yaml"
TYPES = ("impression", "click", "add_to_cart", "purchase", "rating")
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
    1793527200, "1793527200", 0, "1969-12-31T23:59:59Z",  # epoch seconds, the epoch, before the earliest day
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


def multi_object(line: str, other: str, glue: str) -> str:
    return f"{line}{glue}{other}"


def duplicate_key(line: str, key: str, value) -> str:
    """`line` (an object) with `key` given once more at its end: which copy wins is the reader's."""
    if not line.endswith("}") or line == "{}":
        return line
    return f"{line[:-1]},{json.dumps(key)}:{json.dumps(value)}}}"


HOSTILE = st.one_of(
    st.builds(multi_object, event_lines(), event_lines(), st.sampled_from(["", " ", ",", "\t"])),
    st.builds(lambda line, junk: f"{line} {junk}}}", event_lines(), LINE_TEXT),
    st.builds(duplicate_key, event_lines(), st.sampled_from(["user_id", "event_id", "ts", "event_type"]),
              JSON_VALUES),
    st.builds(lambda line: line.replace('"', '"\u0000', 1), event_lines()),  # a raw NUL inside a string
    st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(100, 3000)),
    st.builds(lambda depth: '{"a":' * depth + "1" + "}" * depth, st.integers(100, 3000)),
    st.builds(lambda n: json.dumps({"event_id": "long", "user_id": "u1", "item_id": "i1", "event_type": "click",
                                    "ts": "2026-11-01T10:00:00Z", "session_id": "s" * n}), st.integers(10_000, 200_000)),
)
# Bytes that are not UTF-8 (never a line break): the reader replaces them, the line stays one line.
INVALID_UTF8 = st.binary(min_size=1, max_size=6).map(lambda b: bytes(x for x in b if x not in (10, 13)) or b"\xff") \
    .map(lambda b: b + b"\xc3")


@st.composite
def raw_file(draw) -> list[bytes]:
    """One day file's lines as bytes, some of them sent twice."""
    lines = [line.encode() for line in draw(st.lists(st.one_of(LINES, HOSTILE), min_size=20, max_size=120))]
    lines += [prefix.encode() + junk for prefix, junk in draw(st.lists(st.tuples(event_lines(), INVALID_UTF8),
                                                                       max_size=2))]
    resent = draw(st.lists(st.sampled_from(lines), max_size=4))
    return draw(st.permutations(lines + resent))


CATALOGUE = [{"item_id": "i1", "category": "c1", "brand": "b1", "price": 1, "title": "one"}]


@pytest.fixture(scope="module")
def fuzz_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    return base, f"sqlite:///{base}/mlflow.db", itertools.count()


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.large_base_example,
                                 HealthCheck.data_too_large])
@given(lines=raw_file())
def test_the_whole_clean_writes_every_line_once_whatever_the_file_holds(spark, fuzz_roots, lines):
    base, tracking, counter = fuzz_roots
    root = base / f"example-{next(counter)}"
    cfg = load_config(LOCAL_CONF, [f"paths.root={root}", f"mlflow.tracking_uri={tracking}",
                                   "clean.bot_max_events_per_window=3", "clean.events_files_per_day=1"])
    day = Path(cfg.table_path("raw_events", D))
    day.mkdir(parents=True)
    with gzip.open(day / "part-00000.json.gz", "wb") as out:
        out.write(b"".join(line + b"\n" for line in lines))
    Path(cfg.table_path("raw_items")).mkdir(parents=True)
    with gzip.open(Path(cfg.table_path("raw_items")) / "part-00000.jsonl.gz", "wt") as out:
        out.write("".join(json.dumps(r) + "\n" for r in CATALOGUE))

    report = clean.run(spark, cfg, D)

    events = io.read_day(spark, cfg, "events", D).collect() if io.table_exists(cfg, "events", D) else []
    rejects = io.read_day(spark, cfg, "rejects", D).collect() if io.table_exists(cfg, "rejects", D) else []
    assert report["lines_read"] == len(lines) == len(events) + len(rejects)
    assert report["accepted"] == len(events)
    assert report["rejected"] == sum(report["rejected_by_reason"].values()) == len(rejects)
    assert set(report["rejected_by_reason"]) == set(REJECT_REASONS)
    assert Counter(r[REJECT_REASON] for r in rejects) == +Counter(report["rejected_by_reason"])
    # A rejected line keeps its text: every one is a line of the file (bytes that are not
    # UTF-8 come back as U+FFFD, so those lines are only counted).
    invented = Counter(r[LINE] for r in rejects) - Counter(line.decode() for line in lines if is_utf8(line))
    assert all("\ufffd" in line for line in invented), invented
    for r in events:  # what the events table requires of an accepted event
        assert r[EVENT_TYPE] in TYPES and r[TS] is not None
        assert all(r[f.name] is not None for f in EVENTS_SCHEMA.fields if not f.nullable)
        assert r[USER_IDX] >= 1 and r[ITEM_IDX] >= 1
    assert len({r[EVENT_ID] for r in events}) == len(events)  # one copy of each event at most


def is_utf8(line: bytes) -> bool:
    try:
        line.decode()
        return True
    except UnicodeDecodeError:
        return False
