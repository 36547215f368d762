"""Vectorised text: ids, timestamps and JSON lines built with numpy and Arrow kernels.

A day's records travel as an Arrow table of JSON *tokens* (the exact text of each value,
quotes included, null for an absent field), so faults are planted by swapping one token
and a line is rendered by joining `"key":token` pieces, never by a Python loop per event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recpipe.generate.sessions import DAY_MS, DEVICES, EVENT_TYPES

EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts", "session_id", "request_id",
                "position", "device", "price")
ITEM_FIELDS = ("item_id", "category", "brand", "price", "title")
# The numeric event columns that `event_records` renders.
RECORD_SOURCE_COLUMNS = ("user", "item", "etype", "ts_ms", "session", "request", "position", "device", "price")
# Offsets that ISO timestamps are written with ("Z" and "+00:00" both mean UTC).
TS_OFFSETS = (("Z", 0), ("+00:00", 0), ("+01:00", 60), ("+02:00", 120), ("-05:00", -300),
              ("+05:30", 330), ("-08:00", -480), ("+09:00", 540))
TITLE_NOUNS = ("lamp", "jacket", "kettle", "novel", "headphones", "sneakers", "backpack", "mug",
               "blender", "watch", "tent", "keyboard", "scarf", "puzzle", "camera", "vase")
# Salts that keep event, session and request ids apart even with equal counters.
ID_KIND_EVENT, ID_KIND_SESSION, ID_KIND_REQUEST = 1, 2, 3
SEQ_BITS = 40  # an id counter is (day index << SEQ_BITS) | sequence number within the day
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Naming:
    """How ids are spelled for one configuration and seed."""

    seed: int
    user_width: int
    item_width: int

    @classmethod
    def from_config(cls, gen) -> "Naming":
        """Zero-padded widths large enough for every regular and bot user id."""
        max_user = gen.users + gen.days * gen.bot_users_per_day
        return cls(seed=gen.seed, user_width=max(6, len(str(max_user))), item_width=max(5, len(str(gen.items - 1))))

    def user_ids(self, users: np.ndarray, quote: bool = False) -> pa.StringArray:
        return padded_ids("u", users, self.user_width, quote)

    def item_ids(self, items: np.ndarray, quote: bool = False) -> pa.StringArray:
        return padded_ids("i", items, self.item_width, quote)

    def hashed_ids(self, prefix: str, kind: int, day_index: int, numbers: np.ndarray,
                   quote: bool = False) -> pa.StringArray:
        """Opaque, unique ids: a bijective mix of (day, number), so order reveals nothing."""
        counters = (np.uint64(day_index) << np.uint64(SEQ_BITS)) | np.asarray(numbers, dtype=np.uint64)
        salt = np.uint64((self.seed * 0x9E3779B97F4A7C15 + kind * 0xD1B54A32D192ED03) & MASK64)
        return hex_ids(prefix, mix64(counters ^ salt), quote)


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection on uint64 that scatters nearby counters."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def literal_chars(text: str, n: int) -> np.ndarray:
    """(n, len(text)) ASCII codes of the same text on every row."""
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (n, len(text)))


def decimal_chars(numbers: np.ndarray, width: int) -> np.ndarray:
    """(N, width) ASCII codes of non-negative numbers, zero-padded on the left."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(numbers, dtype=np.int64)[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def hex_chars(values: np.ndarray) -> np.ndarray:
    """(N, 16) ASCII codes of the lower-case hex digits of uint64 values."""
    octets = np.asarray(values, dtype=">u8").view(np.uint8).reshape(-1, 8)
    chars = np.empty((len(octets), 16), dtype=np.uint8)
    chars[:, 0::2] = HEX_DIGITS[octets >> 4]
    chars[:, 1::2] = HEX_DIGITS[octets & 15]
    return chars


def strings_from_chars(*columns: np.ndarray) -> pa.StringArray:
    """An Arrow string array whose row i is the ASCII codes of row i of the columns, side by side."""
    chars = np.ascontiguousarray(np.hstack(columns))
    n, width = chars.shape
    offsets = (np.arange(n + 1, dtype=np.int32) * width).tobytes()
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def hex_ids(prefix: str, values: np.ndarray, quote: bool = False) -> pa.StringArray:
    """`prefix` followed by the 16 hex digits of each uint64, optionally as JSON strings."""
    q = '"' if quote else ""
    return strings_from_chars(literal_chars(q + prefix, len(values)), hex_chars(values), literal_chars(q, len(values)))


def padded_ids(prefix: str, numbers: np.ndarray, width: int, quote: bool = False) -> pa.StringArray:
    """`prefix` followed by each number zero-padded to `width` digits ("u000123")."""
    q, n = ('"' if quote else ""), len(numbers)
    return strings_from_chars(literal_chars(q + prefix, n), decimal_chars(numbers, width), literal_chars(q, n))


def wall_clock_chars(ms: np.ndarray) -> np.ndarray:
    """(N, 23) ASCII "YYYY-MM-DDTHH:MM:SS.mmm" of epoch-ms instants (years 1000-9999)."""
    days = np.floor_divide(ms, DAY_MS)
    ms_of_day = ms - days * DAY_MS
    date = days.astype("datetime64[D]")
    month_start = date.astype("datetime64[M]")
    year = date.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day = (date - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    n = len(ms)
    return np.hstack([
        decimal_chars(year, 4), literal_chars("-", n), decimal_chars(month, 2), literal_chars("-", n),
        decimal_chars(day, 2), literal_chars("T", n), decimal_chars(ms_of_day // 3_600_000, 2), literal_chars(":", n),
        decimal_chars(ms_of_day // 60_000 % 60, 2), literal_chars(":", n), decimal_chars(ms_of_day // 1000 % 60, 2),
        literal_chars(".", n), decimal_chars(ms_of_day % 1000, 3),
    ])


def quoted(values: pa.Array) -> pa.Array:
    """JSON string tokens of plain ASCII values (no quotes or backslashes inside)."""
    return pc.binary_join_element_wise('"', values, '"', "")


def vocabulary_tokens(vocabulary: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Quoted tokens of `vocabulary[code]` for each code."""
    return quoted(pa.array(vocabulary)).take(pa.array(np.asarray(codes, dtype=np.int64)))


def epoch_ms(date: dt.date) -> int:
    """UTC midnight of `date` in epoch milliseconds."""
    return int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


def ts_tokens(ts_ms: np.ndarray, epoch_share: float, rng: np.random.Generator) -> pa.Array:
    """Timestamp tokens for UTC epoch-ms instants: a JSON integer or an ISO-8601 string.

    ISO strings carry milliseconds and an offset; the wall-clock part is the instant's
    local time at that offset, so every form names the same instant.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    as_epoch = rng.random(len(ts_ms)) < epoch_share
    offset_code = rng.integers(0, len(TS_OFFSETS), size=len(ts_ms))
    offset_min = np.array([m for _, m in TS_OFFSETS], dtype=np.int64)[offset_code]
    wall = strings_from_chars(literal_chars('"', len(ts_ms)), wall_clock_chars(ts_ms + offset_min * 60_000))
    suffix = pa.array([text + '"' for text, _ in TS_OFFSETS]).take(pa.array(offset_code))
    iso = pc.binary_join_element_wise(wall, suffix, "")
    return pc.if_else(pa.array(as_epoch), pc.cast(pa.array(ts_ms), pa.string()), iso)


def number_tokens(values: np.ndarray) -> pa.Array:
    """JSON number tokens; NaN becomes null (the field is left out of the line)."""
    return pc.cast(pa.array(values, from_pandas=True), pa.string())


def event_records(events: pd.DataFrame, seq: np.ndarray, day_index: int, naming: Naming, epoch_share: float,
                  rng: np.random.Generator) -> pa.Table:
    """Token table of events (one row per raw line), with helper columns for faults.

    Args:
        events: numeric events (`sessions.EVENT_COLUMNS`), `ts_ms` absolute UTC epoch ms.
        seq: (N,) each event's sequence number in its day, the source of its event id.
        day_index: the day the events belong to (ids are unique across days).
        naming: id spelling.
        epoch_share: share of timestamps written as epoch milliseconds.
        rng: draws the timestamp forms.

    Returns:
        Columns `EVENT_FIELDS` (tokens) and `_etype`, `_ts_ms`, `_position`, `_line`
        (a literal line that replaces the rendering; null for ordinary records).
    """
    return pa.table({
        "event_id": naming.hashed_ids("e", ID_KIND_EVENT, day_index, seq, quote=True),
        "user_id": naming.user_ids(events["user"].to_numpy(), quote=True),
        "item_id": naming.item_ids(events["item"].to_numpy(), quote=True),
        "event_type": vocabulary_tokens(EVENT_TYPES, events["etype"].to_numpy()),
        "ts": ts_tokens(events["ts_ms"].to_numpy(), epoch_share, rng),
        "session_id": naming.hashed_ids("s", ID_KIND_SESSION, day_index, events["session"].to_numpy(), quote=True),
        "request_id": naming.hashed_ids("r", ID_KIND_REQUEST, day_index, events["request"].to_numpy(), quote=True),
        "position": number_tokens(events["position"].to_numpy()),
        "device": vocabulary_tokens(DEVICES, events["device"].to_numpy()),
        "price": number_tokens(events["price"].to_numpy()),
        "_etype": pa.array(events["etype"].to_numpy(), type=pa.int8()),
        "_ts_ms": pa.array(events["ts_ms"].to_numpy(), type=pa.int64()),
        "_position": pa.array(events["position"].to_numpy(), type=pa.int64()),
        "_line": pa.nulls(len(events), type=pa.string()),
    })


def render_lines(table: pa.Table, fields: tuple[str, ...]) -> pa.Array:
    """One JSON object per row from its tokens; a null token leaves the field out."""
    pieces = [pc.binary_join_element_wise(f'"{name}":', table[name], "") for name in fields]
    body = pc.binary_join_element_wise(*pieces, ",", null_handling="skip")
    lines = pc.binary_join_element_wise("{", body, "}", "")
    if "_line" in table.column_names:
        lines = pc.coalesce(table["_line"], lines)
    return lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines


def string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The (N + 1,) offsets and the uint8 data of a string array without nulls."""
    strings = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset: strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if len(strings) else np.zeros(0, np.uint8)
    return offsets, data


def lines_blob(lines: pa.Array) -> bytes:
    """The bytes of a JSON-lines file: every line followed by a newline."""
    offsets, data = string_buffers(pc.binary_join_element_wise(lines, "\n", ""))
    return data[offsets[0]: offsets[-1]].tobytes()


def truncate(strings: pa.Array, keep: np.ndarray) -> pa.StringArray:
    """Each string cut to its first `keep[i]` bytes (ASCII text, so bytes are chars)."""
    offsets, data = string_buffers(strings)
    starts, lengths = offsets[:-1], np.diff(offsets)
    keep = np.minimum(np.asarray(keep, dtype=np.int64), lengths)
    within = np.arange(offsets[-1] - offsets[0]) - (np.repeat(starts, lengths) - offsets[0])
    kept = data[offsets[0]: offsets[-1]][within < np.repeat(keep, lengths)]
    new_offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int32)
    return pa.StringArray.from_buffers(len(keep), pa.py_buffer(new_offsets.tobytes()), pa.py_buffer(kept.tobytes()))


def catalogue_records(world, naming: Naming) -> pa.Table:
    """Token table of the item catalogue (`ITEM_FIELDS`)."""
    category = category_names(len(world.category_centres)).take(pa.array(world.item_category))
    brand_width = len(str(max(int(world.item_brand.max(initial=0)), 9)))
    brand = pc.binary_join_element_wise(category, padded_ids("b", world.item_brand, brand_width), "-")
    noun = pa.array(TITLE_NOUNS).take(pa.array(world.item_category % len(TITLE_NOUNS)))
    model = padded_ids("no. ", np.arange(world.n_items), naming.item_width)
    title = pc.binary_join_element_wise(pc.utf8_capitalize(brand), noun, model, " ")
    return pa.table({
        "item_id": naming.item_ids(np.arange(world.n_items), quote=True),
        "category": quoted(category),
        "brand": quoted(brand),
        "price": number_tokens(world.item_price),
        "title": quoted(title),
    })


def category_names(n_categories: int) -> pa.StringArray:
    """The catalogue's category names by category index ("cat07")."""
    return padded_ids("cat", np.arange(n_categories), max(2, len(str(n_categories - 1))))
