"""`recpipe nightly --date D` and `recpipe backfill`: the scheduled run, safe to repeat.

The nightly runs `nightly.stages` (declared stages, in pipeline order) for each date
through the runner: one lock for the whole run, finished stages skipped (their markers
still match), `--force` reruns everything, `--from-stage S` reruns S and what follows.
A failed stage stops the run, leaves no marker, and the summary names it. The tracking
server (an http(s) tracking URI) is checked before any Spark work.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Sequence

from recpipe import stages as declared
from recpipe.config import Config
from recpipe.errors import ConfigError, RecpipeError
from recpipe.lock import describe_command
from recpipe.runner import NOT_RUN, SKIPPED, Runner, StageFailed, StageOutcome, format_outcomes, running
from recpipe.stage import Stage

log = logging.getLogger("recpipe.nightly")


class NightlyError(RecpipeError):
    """A nightly stage failed (the message names it); `.outcomes` holds the whole table."""


def stages_to_run(cfg: Config, from_stage: str | None) -> list[Stage]:
    chosen = [declared.get(name) for name in cfg.nightly.stages]
    if from_stage is not None and from_stage not in cfg.nightly.stages:
        raise ConfigError(f"--from-stage {from_stage}: not one of nightly.stages ({', '.join(cfg.nightly.stages)})")
    return chosen


def run_date(runner: Runner, date: dt.date, stages: Sequence[Stage], *, force: bool = False,
             from_stage: str | None = None, skip: Sequence[str] = ()) -> list[StageOutcome]:
    """The nightly stages for one date; NightlyError naming the stage that failed."""
    names = [s.name for s in stages]
    forced_from = names.index(from_stage) if from_stage else (0 if force else len(names))
    outcomes: list[StageOutcome] = []
    for position, stage in enumerate(stages):
        if stage.name in skip:
            outcomes.append(StageOutcome(date, stage.name, SKIPPED, note="not run for this date"))
            continue
        try:
            outcomes.append(runner.run(stage, date, force=position >= forced_from))
        except StageFailed as err:
            outcomes += err.outcomes + [StageOutcome(date, s, NOT_RUN) for s in names[position + 1:]]
            log_nightly_run(runner.cfg, date, outcomes)
            error = NightlyError(f"nightly {date}: {err}")
            error.outcomes = outcomes
            raise error from err
    log_nightly_run(runner.cfg, date, outcomes)
    return outcomes


def log_nightly_run(cfg: Config, date: dt.date, outcomes: Sequence[StageOutcome]) -> None:
    """One MLflow run per nightly date in `recpipe-nightly`: `<stage>_seconds` of every stage
    that ran and a `<stage>` tag with its status, so a slow night is found by query.
    A failure to log is reported and does not fail the nightly: the work is done."""
    from recpipe.names import NIGHTLY_EXPERIMENT
    from recpipe.tracking import start_run

    ran = [o for o in outcomes if o.status not in (SKIPPED, NOT_RUN)]
    if not ran:
        return  # a nightly that found everything done has nothing to record
    try:
        import mlflow

        with start_run(cfg, NIGHTLY_EXPERIMENT, run_name=f"nightly-{date}",
                       tags={"date": date.isoformat(), **{o.stage: o.status for o in outcomes}}):
            mlflow.log_metrics({**{f"{o.stage}_seconds": round(o.seconds, 3) for o in ran},
                                "total_seconds": round(sum(o.seconds for o in ran), 3)})
    except Exception as err:  # noqa: BLE001  (the tracking store, not the pipeline, failed)
        log.warning("nightly %s: could not log the stage seconds to MLflow: %s", date, err)


def nightly(cfg: Config, dates: Sequence[dt.date], *, force: bool = False, from_stage: str | None = None,
            promote_last_only: bool = False) -> list[StageOutcome]:
    """Run the nightly for each date in order under the lock; print the summary table.

    With `promote_last_only` (backfill), `promote` runs only for the last date, and only
    when `nightly.promote_backfill` is set: backfilled versions are registered but never
    move `champion` otherwise.
    """
    stages = stages_to_run(cfg, from_stage)
    outcomes: list[StageOutcome] = []
    with running(cfg, describe_command()) as runner:
        try:
            for date in dates:
                skip = ()
                if promote_last_only and (date != dates[-1] or not cfg.nightly.promote_backfill):
                    skip = ("promote",)
                outcomes += run_date(runner, date, stages, force=force, from_stage=from_stage, skip=skip)
        except NightlyError as err:
            outcomes += err.outcomes
            err.outcomes = outcomes
            print(format_outcomes(outcomes))
            raise
    print(format_outcomes(outcomes))
    return outcomes
