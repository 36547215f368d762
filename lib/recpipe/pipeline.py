"""Running stages in order for one or more days, in one Spark session.

Each stage is `recpipe.<module>.run(spark, cfg, date) -> dict`; the CLI's stage commands,
`jobs/*.py` and this module all call the same functions. With `submit.enabled` a stage runs
as its own spark-submit application instead (`recpipe.submit`), and `spark` is None here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import time
from typing import Callable, Iterable, Sequence

from pyspark.sql import SparkSession

from recpipe.config import Config
from recpipe.errors import ConfigError

log = logging.getLogger("recpipe.pipeline")

# stage name -> module whose `run(spark, cfg, date)` does the work, in pipeline order
STAGE_MODULES: dict[str, str] = {
    "clean": "etl.clean",
    "features": "etl.features",
    "als": "als.stage",
    "train": "ranker.stage",
    "promote": "registry.promote",
    "score": "registry.score",
}
STAGES: tuple[str, ...] = tuple(STAGE_MODULES)


@dataclasses.dataclass
class StageResult:
    stage: str
    date: dt.date
    seconds: float
    status: str
    summary: dict


def stage_function(stage: str) -> Callable[[SparkSession, Config, dt.date], dict]:
    if stage not in STAGE_MODULES:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return importlib.import_module(f"recpipe.{STAGE_MODULES[stage]}").run


def run_stage(spark: SparkSession | None, cfg: Config, stage: str, date: dt.date) -> dict:
    """One stage for one date: in this process's session, or submitted when submit.enabled."""
    from recpipe.submit import submit_stage, submitting

    if submitting(cfg):
        return submit_stage(cfg, stage, date)
    return stage_function(stage)(spark, cfg, date) or {}


def parse_stages(text: str) -> list[str]:
    """'clean,features' -> ['clean', 'features'], checked and put in pipeline order."""
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    for stage in wanted:
        stage_function(stage)
    return [s for s in STAGES if s in wanted]


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ConfigError(f"--end {last} is before --start {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def run_stages(spark: SparkSession | None, cfg: Config, dates: Iterable[dt.date], stages: Sequence[str]) -> list[StageResult]:
    """Run `stages` for each date in order; stop at the first failure, re-raising it."""
    results = []
    for date in dates:
        for stage in stages:
            started = time.perf_counter()
            log.info("stage %s for %s: starting", stage, date)
            try:
                summary = run_stage(spark, cfg, stage, date)
            except Exception:
                results.append(StageResult(stage, date, time.perf_counter() - started, "failed", {}))
                log.error("stage %s for %s failed\n%s", stage, date, format_results(results))
                raise
            results.append(StageResult(stage, date, time.perf_counter() - started, "ok", summary))
            log.info("stage %s for %s: done in %.1f s", stage, date, results[-1].seconds)
    return results


def format_results(results: Sequence[StageResult]) -> str:
    """A plain-text table: date, stage, seconds, status."""
    lines = [f"{'date':<12}{'stage':<10}{'seconds':>9}  status"]
    lines += [f"{r.date.isoformat():<12}{r.stage:<10}{r.seconds:>9.1f}  {r.status}" for r in results]
    return "\n".join(lines)
