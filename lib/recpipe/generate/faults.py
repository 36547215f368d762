"""Dirty records, late arrivals and bot traffic planted into a day's file.

Every planted record has exactly one fault. Apart from duplicates (exact copies of clean
lines) each is a copy of a real clean event with a fresh event id and one thing broken.
Bots send well-formed events and are caught only by their rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recpipe.generate.sessions import CLICK, DAY_MS, IMPRESSION, PURCHASE, draw_devices
from recpipe.generate.tokens import (EVENT_FIELDS, ID_KIND_EVENT, Naming, render_lines, truncate, ts_tokens,
                                     vocabulary_tokens)

FAULT_KINDS = ("malformed_json", "missing_field", "unknown_event_type", "bad_timestamp", "future_timestamp",
               "invalid_value", "duplicate_event", "bot_traffic")
REQUIRED_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts")
UNKNOWN_EVENT_TYPES = ("view", "hover", "share", "wishlist", "scroll")
# Neither ISO-8601 with an offset nor a JSON integer, and not lenient-parser bait such as
# an impossible but well-shaped date, so every cleaner agrees they are bad.
BAD_TIMESTAMPS = ("2026-13-45T25:00:00Z", "yesterday", "17/11/2026 10:00", "Sun Nov 1 10:00:00 2026",
                  "tomorrow 3pm", "--")
# What a collector emits when it fails: never parses as JSON at all.
GARBAGE_LINES = ("<html><body><h1>502 Bad Gateway</h1></body></html>", "event_id=&user_id=&ts=",
                 "undefined", "#### collector restarted ####", "{{{}}")
# A future timestamp lies at least this far after the end of the file's day.
FUTURE_MIN_MS = 2 * DAY_MS
FUTURE_SPAN_MS = 5 * DAY_MS
HOUR_MS = 3_600_000
BOT_CLICK_DELAY_MS = (1_000, 10_000)


def planted_count(rate: float, base: int) -> int:
    """How many records a rate plants on `base` clean events (rounded half up)."""
    return int(np.floor(rate * base + 0.5))


@dataclass(frozen=True)
class RowSet:
    """Some rows of a token table, named by index so that choosing them copies nothing."""

    table: pa.Table
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def values(self, column: str) -> np.ndarray:
        """A numeric helper column (`_etype`, `_ts_ms`, ...) at these rows."""
        return self.table[column].to_numpy()[self.rows]

    def subset(self, mask: np.ndarray) -> "RowSet":
        return RowSet(self.table, self.rows[mask])

    def sample(self, n: int, rng: np.random.Generator) -> pa.Table:
        """`n` of these rows, drawn without replacement while there are enough."""
        if n == 0 or len(self.rows) == 0:
            return self.table.slice(0, 0)
        return self.table.take(pa.array(self.rows[rng.choice(len(self.rows), size=n, replace=n > len(self.rows))]))


def replace_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def with_fresh_ids(table: pa.Table, first_seq: int, day_index: int, naming: Naming) -> pa.Table:
    """The records with new event ids numbered from `first_seq` in the day."""
    seq = np.arange(first_seq, first_seq + table.num_rows)
    return replace_column(table, "event_id", naming.hashed_ids("e", ID_KIND_EVENT, day_index, seq, quote=True))


def latest_rows(ts_ms: np.ndarray, n: int) -> np.ndarray:
    """Indexes of the `n` latest instants (ties broken by position, deterministically)."""
    return np.argsort(ts_ms, kind="stable")[len(ts_ms) - n:]


def malformed_json(sources: pa.Table, garbage_share: float, rng: np.random.Generator) -> pa.Table:
    """Lines cut short (a strict prefix never parses as an object), some pure garbage."""
    lines = render_lines(sources, EVENT_FIELDS)
    lengths = pc.binary_length(lines).to_numpy(zero_copy_only=False)
    keep = 1 + np.floor(rng.random(len(lengths)) * (lengths - 1)).astype(np.int64)  # 1 .. len-1
    garbage = rng.random(len(lengths)) < garbage_share
    garbage_text = pa.array(GARBAGE_LINES).take(pa.array(rng.integers(0, len(GARBAGE_LINES), size=len(lengths))))
    return replace_column(sources, "_line", pc.if_else(pa.array(garbage), garbage_text, truncate(lines, keep)))


def missing_field(sources: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Each record loses one required field."""
    dropped = rng.integers(0, len(REQUIRED_FIELDS), size=sources.num_rows)
    for code, name in enumerate(REQUIRED_FIELDS):
        absent = pa.array(dropped == code)
        sources = replace_column(sources, name, pc.if_else(absent, pa.scalar(None, pa.string()), sources[name]))
    return sources


def unknown_event_type(sources: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Each record's event type becomes one the contract does not know."""
    codes = rng.integers(0, len(UNKNOWN_EVENT_TYPES), size=sources.num_rows)
    return replace_column(sources, "event_type", vocabulary_tokens(UNKNOWN_EVENT_TYPES, codes))


def bad_timestamp(sources: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Each record's ts becomes a non-empty string that is no timestamp form we accept."""
    codes = rng.integers(0, len(BAD_TIMESTAMPS), size=sources.num_rows)
    return replace_column(sources, "ts", vocabulary_tokens(BAD_TIMESTAMPS, codes))


def future_timestamp(sources: pa.Table, day_end_ms: int, epoch_share: float, rng: np.random.Generator) -> pa.Table:
    """Each record's ts becomes a well-formed instant 2 to 7 days after the day ends."""
    ts = day_end_ms + FUTURE_MIN_MS + (rng.random(sources.num_rows) * FUTURE_SPAN_MS).astype(np.int64)
    return replace_column(sources, "ts", ts_tokens(ts, epoch_share, rng))


def invalid_value(clean: RowSet, n: int, price_share: float, rng: np.random.Generator) -> pa.Table:
    """`n` records with a negative purchase price or a negative feed position.

    Negative prices are drawn from the day's purchases (the only events with a price);
    if there are none, every record gets a negative position instead.
    """
    purchases = clean.subset(clean.values("_etype") == PURCHASE)
    n_price = planted_count(price_share, n) if len(purchases) else 0
    priced = purchases.sample(n_price, rng)
    priced = replace_column(priced, "price", pc.binary_join_element_wise("-", priced["price"], ""))
    positioned = clean.sample(n - n_price, rng)
    negative = -(positioned["_position"].to_numpy() + 1)
    positioned = replace_column(positioned, "position", pc.cast(pa.array(negative), pa.string()))
    return pa.concat_tables([priced, positioned])


def bot_events(gen, n_items: int, day_index: int, first_session: int, first_request: int,
               rng: np.random.Generator) -> pd.DataFrame:
    """Well-formed impressions and clicks from the day's bot accounts, one busy hour each.

    Bot user numbers follow the regular users' (`users + day * bot_users_per_day + b`),
    so their ids never collide with a regular user's. `ts_ms` is relative to midnight.
    Needs at least one bot and one event per hour.
    """
    n_bots, per_hour, feed = gen.bot_users_per_day, gen.bot_events_per_hour, gen.feed_size
    n_clicks = min(planted_count(gen.bot_click_share, per_hour), per_hour - 1)  # a click needs an impression
    n_imps = per_hour - n_clicks
    hour_start = rng.integers(0, DAY_MS - HOUR_MS + 1, size=n_bots)
    slot = np.arange(n_imps)
    requests_per_bot = -(-n_imps // feed)
    imp_ts = hour_start[:, None] + np.sort(rng.integers(0, HOUR_MS, size=(n_bots, n_imps)), axis=1)
    imp = {
        "user": np.repeat(gen.users + day_index * n_bots + np.arange(n_bots), n_imps),
        "item": rng.integers(0, n_items, size=n_bots * n_imps),
        "ts_ms": imp_ts.ravel(),
        "session": np.repeat(first_session + np.arange(n_bots), n_imps),
        "request": (first_request + np.arange(n_bots)[:, None] * requests_per_bot + slot // feed).ravel(),
        "position": np.tile(slot % feed, n_bots),
        "device": np.repeat(draw_devices(n_bots, rng), n_imps),
    }
    # Each click repeats one of the bot's impressions a few seconds later, inside its hour.
    shown = (np.arange(n_bots)[:, None] * n_imps + rng.integers(0, n_imps, size=(n_bots, n_clicks))).ravel()
    delay = rng.integers(*BOT_CLICK_DELAY_MS, size=len(shown))
    click_ts = np.minimum(imp["ts_ms"][shown] + delay, np.repeat(hour_start + HOUR_MS - 1, n_clicks))
    clicks = {k: v[shown] for k, v in imp.items()} | {"ts_ms": click_ts}
    frames = [pd.DataFrame(imp).assign(etype=IMPRESSION), pd.DataFrame(clicks).assign(etype=CLICK)]
    return pd.concat(frames, ignore_index=True).assign(price=np.nan)
