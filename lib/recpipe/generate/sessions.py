"""One day of clean behaviour: sessions of feed requests, impressions and actions.

The day runs in request rounds: round r serves the r-th request of every user who makes
at least r + 1 requests that day, all users at once. Rounds follow each user's clock, so
the click model always sees exactly the clicks made before the request it scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recpipe.generate.clicks import ClickParams, append_clicks, click_model
from recpipe.generate.world import World, sample_candidates

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
IMPRESSION, CLICK, ADD_TO_CART, PURCHASE = range(len(EVENT_TYPES))
DEVICES = ("ios", "android", "web", "tablet")
DEVICE_WEIGHTS = (0.4, 0.35, 0.2, 0.05)

DAY_MS = 86_400_000
MINUTE_MS = 60_000
# Contract with the cleaner's attribution window: a click follows its impression within
# 30 minutes. Carts and purchases follow their click/cart within the same bound.
ACTION_DELAY_MAX_MS = 30 * MINUTE_MS - 1
ACTION_DELAY_MIN_MS = 1_000
# Requests start early enough that a click, a cart and a purchase after them still fall
# on the same UTC day.
REQUEST_END_MS = DAY_MS - 3 * (ACTION_DELAY_MAX_MS + 1)
# A new session starts after at least this much inactivity (where the day leaves room).
SESSION_GAP_MIN_MS = 30 * MINUTE_MS

EVENT_COLUMNS = ("user", "item", "etype", "ts_ms", "session", "request", "position", "device", "price",
                 "p_click", "clicked", "max_sim", "mean_sim")


def simulate_day(world: World, history: np.ndarray, gen, params: ClickParams,
                 rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Clean events of one day for the regular users.

    Args:
        world: catalogue and users.
        history: (U, history_window) clicked items so far, most recent last, -1 padded.
        gen: the `GenerateConfig`.
        params: the hidden click model.
        rng: this day's generator.

    Returns:
        The day's events (columns `EVENT_COLUMNS`; `ts_ms` is UTC epoch milliseconds
        relative to the day's midnight; impressions carry the truth columns `p_click`,
        `clicked`, `max_sim`, `mean_sim`, other events NaN/False there), and the updated
        history.
        `session` and `request` are day-local counters.
    """
    active = np.flatnonzero(rng.random(world.n_users) < gen.daily_active_share).astype(np.int32)
    n_requests = 1 + rng.poisson(max(gen.requests_per_active_user - 1.0, 0.0), size=len(active))
    clock = rng.integers(0, REQUEST_END_MS, size=len(active))  # each active user's next request
    session = np.arange(len(active))
    device = draw_devices(len(active), rng)
    n_sessions, n_request_ids = len(active), 0
    pieces = []
    for round_no in range(int(n_requests.max(initial=0))):
        who = np.flatnonzero(n_requests > round_no)
        if round_no > 0:
            # No room left for a request after the user's last event: they stop for the
            # day, so a request never starts before the clicks of the one before it.
            out_of_day = clock[who] >= REQUEST_END_MS - 1
            n_requests[who[out_of_day]] = round_no
            who = who[~out_of_day]
            if len(who) == 0:
                break
            new = rng.random(len(who)) >= gen.session_continue_share
            clock[who] = next_request_time(clock[who], new, gen.request_gap_mean_s, rng)
            session[who[new]] = n_sessions + np.arange(new.sum())
            device[who[new]] = draw_devices(int(new.sum()), rng)
            n_sessions += int(new.sum())
        requests = n_request_ids + np.arange(len(who))
        n_request_ids += len(who)
        events, clicked_items, last_ts = serve_requests(
            world, history, active[who], clock[who], session[who], requests, device[who], gen, params, rng)
        history[active[who]] = append_clicks(history[active[who]], clicked_items)
        clock[who] = last_ts
        pieces.append(events)
    events = pd.concat(pieces, ignore_index=True) if pieces else empty_events()
    return events, history


def empty_events() -> pd.DataFrame:
    """A frame with the event columns and no rows."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in EVENT_COLUMNS})


def draw_devices(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) device codes (indexes into `DEVICES`)."""
    return rng.choice(len(DEVICES), size=n, p=DEVICE_WEIGHTS).astype(np.int8)


def next_request_time(last_ts: np.ndarray, new_session: np.ndarray, gap_mean_s: float,
                      rng: np.random.Generator) -> np.ndarray:
    """When each user's next request starts, after their last event.

    Inside a session the next feed follows shortly; a new session starts at least
    `SESSION_GAP_MIN_MS` later, somewhere in what is left of the day.
    """
    in_session = last_ts + ACTION_DELAY_MIN_MS + rng.exponential(gap_mean_s * 1000.0, size=len(last_ts))
    earliest = last_ts + SESSION_GAP_MIN_MS
    later = earliest + rng.random(len(last_ts)) * np.maximum(REQUEST_END_MS - earliest, 0)
    return np.minimum(np.where(new_session, later, in_session), REQUEST_END_MS - 1).astype(np.int64)


def action_delays(shape, mean_s: float, rng: np.random.Generator) -> np.ndarray:
    """Delays in ms from one action to the next: seconds to minutes, at most 30 minutes."""
    delay = ACTION_DELAY_MIN_MS + rng.exponential(mean_s * 1000.0, size=shape)
    return np.minimum(delay, ACTION_DELAY_MAX_MS).astype(np.int64)


def serve_requests(world: World, history: np.ndarray, users: np.ndarray, ts: np.ndarray, session: np.ndarray,
                   request: np.ndarray, device: np.ndarray, gen, params: ClickParams,
                   rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One feed request per user: impressions, then the clicks, carts and purchases.

    Returns:
        The events, the clicked items in click order (N, F) with -1 elsewhere, and each
        user's last event time (N,).
    """
    feed = gen.feed_size
    items = sample_candidates(world, users, feed, gen.candidate_interest_share, rng)  # (N, F)
    position = np.broadcast_to(np.arange(feed), items.shape)
    scores = score_feed(world, history[users], users, items, position, params)
    actions = draw_actions(scores[0], ts, gen, rng)
    shared = {
        "user": np.repeat(users, feed), "item": items.ravel(),
        "session": np.repeat(session, feed), "request": np.repeat(request, feed),
        "position": position.ravel(), "device": np.repeat(device, feed),
    }
    events = pd.concat([
        impression_frame(shared, np.repeat(ts, feed), *scores, actions["click"][0]),
        *(action_frame(shared, etype, *actions[name], world.item_price[items])
          for etype, name in ((CLICK, "click"), (ADD_TO_CART, "add_to_cart"), (PURCHASE, "purchase"))),
    ], ignore_index=True)
    happened, when = actions["click"]
    click_order = np.argsort(np.where(happened, when, np.iinfo(np.int64).max), axis=1, kind="stable")
    clicked_items = np.where(np.take_along_axis(happened, click_order, axis=1),
                             np.take_along_axis(items, click_order, axis=1), -1)
    last_ts = np.max([np.where(h, t, ts[:, None]) for h, t in actions.values()], axis=(0, 2))
    return events, clicked_items, last_ts


def score_feed(world: World, history: np.ndarray, users: np.ndarray, items: np.ndarray, position: np.ndarray,
               params: ClickParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_click, max_sim, mean_sim), each (N, F), of the hidden model for each feed slot."""
    cand = world.item_vectors[items]  # (N, F, D)
    hist = world.item_vectors[np.maximum(history, 0)][:, None]  # (N, 1, H, D): shared by the user's slots
    hist_mask = (history >= 0)[:, None, :]  # (N, 1, H)
    interest_vecs, interest_mask = world.interest_vectors(users)
    return click_model(cand, hist, hist_mask, world.item_popularity_z[items], position, params,
                       interest_vecs[:, None], interest_mask[:, None])


def draw_actions(p_click: np.ndarray, ts: np.ndarray, gen,
                 rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For click, add_to_cart and purchase: (N, F) whether it happened, and when (ms).

    Each action may only follow the one before it, a short delay later.
    """
    clicked = rng.random(p_click.shape) < p_click
    carted = clicked & (rng.random(p_click.shape) < gen.cart_rate)
    bought = carted & (rng.random(p_click.shape) < gen.purchase_rate)
    click_ts = ts[:, None] + action_delays(p_click.shape, gen.action_delay_mean_s, rng)
    cart_ts = click_ts + action_delays(p_click.shape, gen.action_delay_mean_s, rng)
    buy_ts = cart_ts + action_delays(p_click.shape, gen.action_delay_mean_s, rng)
    return {"click": (clicked, click_ts), "add_to_cart": (carted, cart_ts), "purchase": (bought, buy_ts)}


def impression_frame(shared: dict, ts: np.ndarray, p_click: np.ndarray, max_sim: np.ndarray, mean_sim: np.ndarray,
                     clicked: np.ndarray) -> pd.DataFrame:
    """Impression events with their truth columns."""
    return pd.DataFrame({
        **shared, "etype": IMPRESSION, "ts_ms": ts, "price": np.nan,
        "p_click": p_click.ravel(), "clicked": clicked.ravel(), "max_sim": max_sim.ravel(), "mean_sim": mean_sim.ravel(),
    })


def action_frame(shared: dict, etype: int, happened: np.ndarray, when: np.ndarray, prices: np.ndarray) -> pd.DataFrame:
    """The actions of one type that happened; purchases carry the catalogue price."""
    flat = happened.ravel()
    nan = np.float32(np.nan)
    return pd.DataFrame({
        **{k: v[flat] for k, v in shared.items()}, "etype": etype, "ts_ms": when.ravel()[flat],
        "price": prices.ravel()[flat] if etype == PURCHASE else np.nan,
        "p_click": nan, "clicked": False, "max_sim": nan, "mean_sim": nan,
    })
