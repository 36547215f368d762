"""`recpipe pipeline`: several stages for a range of days, in one Spark session, through the
runner (one lock for the whole range; finished stages skipped unless forced)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Iterable, Sequence

from recpipe.config import Config
from recpipe.errors import ConfigError
from recpipe.lock import describe_command
from recpipe.runner import StageFailed, StageOutcome, format_outcomes, running
from recpipe.stage import Stage

log = logging.getLogger("recpipe.pipeline")


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ConfigError(f"--end {last} is before --start {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def run_stages(cfg: Config, dates: Iterable[dt.date], stages: Sequence[Stage], *, force: bool = False
               ) -> list[StageOutcome]:
    """Run `stages` for each date in order; stop at the first failure (StageFailed, with
    the outcomes so far)."""
    outcomes: list[StageOutcome] = []
    with running(cfg, describe_command()) as runner:
        for date in dates:
            for stage in stages:
                try:
                    outcomes.append(runner.run(stage, date, force=force))
                except StageFailed as err:
                    err.outcomes[:0] = outcomes
                    log.error("%s\n%s", err, format_outcomes(err.outcomes))
                    raise
    return outcomes
