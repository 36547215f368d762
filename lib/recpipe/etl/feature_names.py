"""Names of the feature columns and of the dense vectors' entries (recorded in `_meta.json`)."""

from __future__ import annotations

from typing import Iterable

from recpipe.schema import EVENT_TYPES, PRICE, RECENCY_DAYS


def count_name(event_type: str, days: int) -> str:
    """Column of the number of `event_type` events in the `days` days before the cut-off."""
    return f"{event_type}_{days}d"


def ctr_name(days: int) -> str:
    return f"ctr_{days}d"


def activity_names(windows_days: Iterable[int]) -> list[str]:
    """Counts (every event type, every window) then CTR per window, in a fixed order."""
    windows = list(windows_days)
    return [count_name(t, w) for w in windows for t in EVENT_TYPES] + [ctr_name(w) for w in windows]


CATEGORY_SHARE_PREFIX = "impression_share_cat"


def category_share_name(cat_idx: int) -> str:
    """The `user_dense` entry of one category's share of the user's past impressions."""
    return f"{CATEGORY_SHARE_PREFIX}{cat_idx:03d}"


def user_dense_names(windows_days: Iterable[int], categories: int = 0) -> list[str]:
    """Names of the `user_dense` entries, in order (recorded in the samples' _meta.json):
    activity, recency, then the impression share of each category 1..`categories`."""
    return ([_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{RECENCY_DAYS}"]
            + [category_share_name(k) for k in range(1, categories + 1)])


def item_dense_names(windows_days: Iterable[int]) -> list[str]:
    """Names of the `item_dense` entries, in order (recorded in the samples' _meta.json)."""
    return [_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{PRICE}"]


def _dense_name(column: str) -> str:
    return column if column.startswith("ctr_") else f"log1p_{column}"
