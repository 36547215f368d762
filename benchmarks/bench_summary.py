"""The closing line every benchmark prints: `summary: key=value …` of its scalar figures."""

from __future__ import annotations

from typing import Any, Iterator


def flat_figures(figures: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every number, bool or short string in nested dicts and lists."""
    if isinstance(figures, dict):
        for key, value in figures.items():
            yield from flat_figures(value, f"{prefix}{key}.")
    elif isinstance(figures, (list, tuple)):
        for index, value in enumerate(figures):
            yield from flat_figures(value, f"{prefix}{index}.")
    elif isinstance(figures, (bool, int, float)) or (isinstance(figures, str) and " " not in figures):
        yield prefix.rstrip("."), figures


def summary_line(figures: Any) -> str:
    return "summary: " + " ".join(f"{key}={value}" for key, value in flat_figures(figures))
