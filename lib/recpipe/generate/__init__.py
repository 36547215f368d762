"""`recpipe generate`: a synthetic collector with a planted truth.

Writes, under the configured data root,

- `raw/items/part-00000.jsonl.gz`: the item catalogue;
- `raw/events/dt=D/part-NNNNN.json.gz`: each day's raw behaviour log, clean events mixed
  with planted faults, late arrivals and bot traffic, lines shuffled;
- `truth/`: hidden vectors, interests and every clean impression's click probability;
- `raw/manifest.json`: exactly what was planted, per day and in total.

Days are generated one at a time; only the click histories, the late events and the
previous day's re-send sample cross from one day to the next, so memory is bounded by
one day's events. The same seed and configuration give the same bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import numpy as np
import pyarrow as pa

from recpipe.errors import ConfigError
from recpipe.generate.clicks import ClickParams, click_probability, history_similarities
from recpipe.generate.faults import (
    FAULT_KINDS,
    RowSet,
    bad_timestamp,
    bot_events,
    future_timestamp,
    invalid_value,
    latest_rows,
    malformed_json,
    missing_field,
    planted_count,
    unknown_event_type,
    with_fresh_ids,
)
from recpipe.generate.sessions import DAY_MS, EVENT_TYPES, simulate_day
from recpipe.generate.tokens import (
    EVENT_FIELDS,
    ITEM_FIELDS,
    RECORD_SOURCE_COLUMNS,
    Naming,
    catalogue_records,
    epoch_ms,
    event_records,
)
from recpipe.generate.truth import hierarchy_summary, impression_truth, item_truth, user_truth
from recpipe.generate.world import (
    STREAM_BOTS,
    STREAM_DAY,
    STREAM_FAULTS,
    STREAM_RENDER,
    STREAM_SHUFFLE,
    STREAM_WORLD,
    World,
    build_world,
    substream,
)
from recpipe.generate.writer import GzipWriter, write_json, write_json_lines_parts, write_parquet
from recpipe.paths import delete_dir, join_uri

__all__ = ["run", "ClickParams", "click_probability", "history_similarities", "FAULT_KINDS", "EVENT_TYPES"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Carry:
    """What one day hands to the next: late events and the sample to re-send."""

    late: pa.Table | None = None
    resend: pa.Table | None = None


def run(cfg) -> dict:
    """Generate the whole data set for `cfg.generate` and return its manifest.

    Args:
        cfg: the resolved `Config`; tables are written where `cfg.table_path` says.

    Returns:
        The manifest (also written to the `manifest` table): per day and in total, the
        lines written, clean events (by type), late events, faults by kind and bot users.
    """
    gen = cfg.generate
    check_config(gen)
    for table in ("raw_events", "raw_items", "truth"):
        delete_dir(cfg.table_path(table))  # a rerun must not leave parts of an earlier, larger run
    naming = Naming.from_config(gen)
    world = build_world(gen, substream(gen.seed, STREAM_WORLD))
    history = np.full((gen.users, gen.history_window), -1, dtype=np.int32)
    params = ClickParams.from_config(gen)
    carry, days, truth = Carry(), {}, {"impressions": 0, "clicked": 0}
    with GzipWriter(gen.gzip_level) as writer:
        write_world(cfg, world, naming, writer)
        for day_index, date in enumerate(gen.dates):
            days[date.isoformat()], carry, history, day_truth = generate_day(
                cfg, world, naming, params, history, carry, day_index, date, writer)
            truth = {k: truth[k] + day_truth[k] for k in truth}
            log.info("generated %s: %d lines", date, days[date.isoformat()]["lines"])
    manifest = {
        "seed": gen.seed,
        "config": cfg.to_dict()["generate"],
        "days": days,
        "totals": sum_days(list(days.values())),
        "truth": {**truth, "ctr": truth["clicked"] / max(truth["impressions"], 1)},
        "hierarchy": hierarchy_summary(world),
    }
    write_json(cfg.table_path("manifest"), manifest)
    return manifest


def check_config(gen) -> None:
    """Reject settings the generator cannot honour, naming the key."""
    problems = {
        "items": gen.items >= gen.categories,
        "interests_min": 1 <= gen.interests_min <= gen.interests_max,
        "interests_max": gen.interests_max <= gen.categories,
        "requests_per_active_user": gen.requests_per_active_user >= 1,
        "feed_size": gen.feed_size >= 1,
        "history_window": gen.history_window >= 1,
        "events_per_file": gen.events_per_file >= 1,
        "days": gen.days >= 1,
        "users": gen.users >= 1,
    }
    shares = [f.name for f in dataclasses.fields(gen) if f.name.startswith("rate_") or f.name.endswith("_share")]
    problems.update({name: 0.0 <= getattr(gen, name) <= 1.0 for name in shares + ["late_rate", "cart_rate",
                                                                                    "purchase_rate"]})
    for key, ok in problems.items():
        if not ok:
            raise ConfigError(f"generate.{key}={getattr(gen, key)!r} is out of range")


def write_world(cfg, world: World, naming: Naming, writer: GzipWriter) -> None:
    """The catalogue (raw) and the hidden item and user tables (truth)."""
    write_json_lines_parts(writer, cfg.table_path("raw_items"), catalogue_records(world, naming), ITEM_FIELDS,
                           per_file=max(world.n_items, 1), suffix=".jsonl.gz")
    write_parquet(join_uri(cfg.table_path("truth"), "items.parquet"), item_truth(world, naming))
    write_parquet(join_uri(cfg.table_path("truth"), "users.parquet"), user_truth(world, cfg.generate, naming))


def generate_day(cfg, world: World, naming: Naming, params: ClickParams, history: np.ndarray, carry: Carry,
                 day_index: int, date: dt.date, writer: GzipWriter) -> tuple[dict, Carry, np.ndarray, dict]:
    """Simulate, plant and write one day.

    Returns:
        The day's manifest entry, what the next day inherits, the updated click
        histories, and the truth counts {"impressions", "clicked"}.
    """
    gen = cfg.generate
    day_start = epoch_ms(date)
    events, history = simulate_day(world, history, gen, params, substream(gen.seed, STREAM_DAY, day_index))
    events["ts_ms"] += day_start
    truth = impression_truth(events, np.arange(len(events)), day_index, naming)
    write_parquet(join_uri(cfg.table_path("truth_impressions", date), "part-00000.parquet"),
                  truth)

    shuffle_rng = substream(gen.seed, STREAM_SHUFFLE, day_index)
    records = shuffled_records(events, shuffle_rng, gen, naming, day_index)
    n_late = 0 if day_index == gen.days - 1 else planted_count(gen.late_rate, len(events))
    late_rows = latest_rows(records["_ts_ms"].to_numpy(), n_late)
    on_time = np.ones(records.num_rows, dtype=bool)
    on_time[late_rows] = False
    late_in = carry.late if carry.late is not None else records.slice(0, 0)
    clean = RowSet(pa.concat_tables([records, late_in]),
                   np.concatenate([np.flatnonzero(on_time), records.num_rows + np.arange(late_in.num_rows)]))

    bots = bot_records(gen, world, naming, events, day_index, day_start, first_seq=len(events))
    faults_rng = substream(gen.seed, STREAM_FAULTS, day_index)
    planted = plant_faults(clean, carry.resend, gen, naming, day_index, day_start + DAY_MS,
                           first_seq=len(events) + (bots.num_rows if bots is not None else 0), rng=faults_rng)
    if bots is not None:
        planted["bot_traffic"] = bots

    extra = pa.concat_tables([late_in, *(t for t in planted.values() if t.num_rows)])
    n_files = write_json_lines_parts(writer, cfg.table_path("raw_events", date), pa.concat_tables([records, extra]),
                                     EVENT_FIELDS, gen.events_per_file,
                                     order=interleaved_order(on_time, extra.num_rows, shuffle_rng))
    entry = day_entry(clean, late_in, planted, gen.bot_users_per_day if bots is not None else 0, n_files)
    next_day = Carry(
        late=records.take(pa.array(late_rows)),
        resend=clean.sample(planted_count(gen.rate_duplicate_previous_day, len(clean)), faults_rng),
    )
    clicked = int(np.count_nonzero(truth["clicked"].to_numpy(zero_copy_only=False)))
    return entry, next_day, history, {"impressions": truth.num_rows, "clicked": clicked}


def shuffled_records(events, rng: np.random.Generator, gen, naming: Naming, day_index: int) -> pa.Table:
    """The day's clean events as token records, in random order.

    Numbers are shuffled before rendering because gathering them is cheap and gathering
    a million strings is not. An event's id still comes from its original row, the one
    the truth table names.
    """
    order = rng.permutation(len(events))
    rendered = [events.columns.get_loc(c) for c in RECORD_SOURCE_COLUMNS]  # the truth columns stay behind
    return event_records(events.iloc[order, rendered], order, day_index, naming, gen.epoch_ms_share,
                         substream(gen.seed, STREAM_RENDER, day_index))


def interleaved_order(keep: np.ndarray, n_extra: int, rng: np.random.Generator) -> np.ndarray:
    """File order of the kept rows of an already shuffled main block and `n_extra` rows after it.

    The extra rows (late arrivals, faults, bots) land at uniformly random places in
    random order, so the whole file is a uniform shuffle, while the gather stays almost
    sequential through the main block.
    """
    kept = np.flatnonzero(keep)
    total = len(kept) + n_extra
    is_extra = np.zeros(total, dtype=bool)
    is_extra[rng.choice(total, size=n_extra, replace=False)] = True
    order = np.empty(total, dtype=np.int64)
    order[~is_extra] = kept
    order[is_extra] = len(keep) + rng.permutation(n_extra)
    return order


def bot_records(gen, world: World, naming: Naming, events, day_index: int, day_start: int,
                first_seq: int) -> pa.Table | None:
    """The day's bot traffic as records, or None when bots are switched off."""
    if gen.bot_users_per_day == 0 or gen.bot_events_per_hour == 0:
        return None
    rng = substream(gen.seed, STREAM_BOTS, day_index)
    first_session = int(events["session"].max()) + 1 if len(events) else 0
    first_request = int(events["request"].max()) + 1 if len(events) else 0
    bots = bot_events(gen, world.n_items, day_index, first_session, first_request, rng)
    bots["ts_ms"] += day_start
    return event_records(bots, first_seq + np.arange(len(bots)), day_index, naming, gen.epoch_ms_share, rng)


def plant_faults(clean: RowSet, resend: pa.Table | None, gen, naming: Naming, day_index: int, day_end_ms: int,
                 first_seq: int, rng: np.random.Generator) -> dict[str, pa.Table]:
    """Faulty records by kind, each a copy of a clean record with a fresh id and one fault.

    Duplicates are exact copies: of this file's clean lines, and `resend`, the sample of
    the previous day's file.
    """
    base = len(clean)
    next_seq = first_seq

    def copies(rate: float) -> pa.Table:
        nonlocal next_seq
        rows = with_fresh_ids(clean.sample(planted_count(rate, base), rng), next_seq, day_index, naming)
        next_seq += rows.num_rows
        return rows

    planted = {
        "malformed_json": malformed_json(copies(gen.rate_malformed_json), gen.malformed_garbage_share, rng),
        "missing_field": missing_field(copies(gen.rate_missing_field), rng),
        "unknown_event_type": unknown_event_type(copies(gen.rate_unknown_event_type), rng),
        "bad_timestamp": bad_timestamp(copies(gen.rate_bad_timestamp), rng),
        "future_timestamp": future_timestamp(copies(gen.rate_future_timestamp), day_end_ms, gen.epoch_ms_share, rng),
    }
    invalid = invalid_value(clean, planted_count(gen.rate_invalid_value, base), gen.invalid_price_share, rng)
    planted["invalid_value"] = with_fresh_ids(invalid, next_seq, day_index, naming)
    same_day = clean.sample(planted_count(gen.rate_duplicate_same_day, base), rng)
    planted["duplicate_event"] = pa.concat_tables([t for t in (same_day, resend) if t is not None])
    return planted


def day_entry(clean: RowSet, late_in: pa.Table, planted: dict[str, pa.Table], bot_users: int, n_files: int) -> dict:
    """The manifest's record of one day's file."""
    by_type = np.bincount(clean.values("_etype"), minlength=len(EVENT_TYPES))
    faults = {kind: planted[kind].num_rows if kind in planted else 0 for kind in FAULT_KINDS}
    return {
        "lines": len(clean) + sum(faults.values()),
        "clean_events": len(clean),
        "clean_by_type": {name: int(n) for name, n in zip(EVENT_TYPES, by_type)},
        "late_events": late_in.num_rows,
        "faults": faults,
        "bot_users": int(bot_users),
        "files": n_files,
    }


def sum_days(entries: list[dict]) -> dict:
    """Totals over days: numbers add up, nested counts add up key by key."""
    totals: dict = {}
    for entry in entries:
        for key, value in entry.items():
            if isinstance(value, dict):
                nested = totals.setdefault(key, {})
                for k, v in value.items():
                    nested[k] = nested.get(k, 0) + v
            else:
                totals[key] = totals.get(key, 0) + value
    return totals
