"""Seconds per part of a stage, for the stage's summary, log line and MLflow run.

    parts = Parts()
    with parts("fit"):
        model = fit(...)
    parts.seconds  # {"fit_s": 12.3}

Spark is lazy: a part is timed where its work is forced (a write, a count, a
checkpoint), so name parts after the action that runs them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Parts:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"{name}_s"] = round(self.seconds.get(f"{name}_s", 0.0) + time.perf_counter() - started, 3)

    def describe(self) -> str:
        return ", ".join(f"{name[:-2]} {value:.1f} s" for name, value in self.seconds.items())
