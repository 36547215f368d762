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


def user_dense_names(windows_days: Iterable[int]) -> list[str]:
    """Names of the `user_dense` entries, in order (recorded in the samples' _meta.json)."""
    return [_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{RECENCY_DAYS}"]


def item_dense_names(windows_days: Iterable[int]) -> list[str]:
    """Names of the `item_dense` entries, in order (recorded in the samples' _meta.json)."""
    return [_dense_name(c) for c in activity_names(windows_days)] + [f"log1p_{PRICE}"]


def _dense_name(column: str) -> str:
    return column if column.startswith("ctr_") else f"log1p_{column}"
