"""A stage that is not part of recpipe: what a new stage takes (a module with a `STAGE`,
plus one line in `recpipe.stages.STAGES`, which tests/test_runner.py adds)."""

from __future__ import annotations

import datetime as dt
import json

from recpipe import io
from recpipe.config import Config
from recpipe.markers import file_listing
from recpipe.stage import Partition, Stage


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    return [Partition("raw_events", date, required=True)]


def writes(cfg: Config, date: dt.date) -> list[Partition]:
    return [Partition("recommendations", date)]


def run(spark, cfg: Config, date: dt.date) -> dict:
    """Writes `score.top_n` and the names of D's raw files as one JSON file."""
    body = {"raw_files": [name for name, _ in file_listing(cfg.table_path("raw_events", date))],
            "top_n": cfg.score.top_n}
    io.write_file(cfg, "recommendations", date, "toy.json", json.dumps(body).encode())
    return {"rows": 1}


STAGE = Stage(
    name="toy",
    help="a toy stage for the runner's tests",
    config=("score.top_n",),
    reads=reads,
    writes=writes,
    run=run,
    rows=lambda summary: (None, summary["rows"]),
)
