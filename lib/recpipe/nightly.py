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
            print(format_results(date, outcomes, log_nightly_run(runner.cfg, date, outcomes)))
            error = NightlyError(f"nightly {date}: {err}")
            error.outcomes = outcomes
            raise error from err
    print(format_results(date, outcomes, log_nightly_run(runner.cfg, date, outcomes)))
    return outcomes


def log_nightly_run(cfg: Config, date: dt.date, outcomes: Sequence[StageOutcome]) -> str | None:
    """One MLflow run per nightly date in `recpipe-nightly`: `<stage>_seconds` of every stage
    that ran and a `<stage>` tag with its status, so a slow night is found by query; returns
    its run id. A failure to log is reported and does not fail the nightly: the work is done."""
    from recpipe.names import NIGHTLY_EXPERIMENT
    from recpipe.tracking import start_run

    ran = [o for o in outcomes if o.status not in (SKIPPED, NOT_RUN)]
    if not ran:
        return None  # a nightly that found everything done has nothing to record
    try:
        import mlflow

        with start_run(cfg, NIGHTLY_EXPERIMENT, run_name=f"nightly-{date}",
                       tags={"date": date.isoformat(), **{o.stage: o.status for o in outcomes}}) as run:
            mlflow.log_metrics({**{f"{o.stage}_seconds": round(o.seconds, 3) for o in ran},
                                "total_seconds": round(sum(o.seconds for o in ran), 3)})
        return run.info.run_id
    except Exception as err:  # noqa: BLE001  (the tracking store, not the pipeline, failed)
        log.warning("nightly %s: could not log the stage seconds to MLflow: %s", date, err)
        return None


def format_results(date: dt.date, outcomes: Sequence[StageOutcome], nightly_run: str | None) -> str:
    """How D went, beside the seconds of the table: the key measures of each stage that ran
    this time (a skipped stage's were printed by the night that ran it) and the MLflow runs."""
    lines = [f"results for {date}:"]
    for outcome in outcomes:
        describe = RESULTS.get(outcome.stage)
        if outcome.date == date and outcome.summary and describe is not None:
            lines.append(f"  {outcome.stage:<9}{describe(outcome.summary)}")
    lines.append(f"  {'nightly':<9}run {nightly_run or '-'} (experiment recpipe-nightly)")
    return "\n".join(lines)


def _measure(summary: dict, key: str) -> str:
    value = summary.get(key)
    return "-" if value is None else f"{value:.4f}"


def als_results(summary: dict) -> str:
    """Recall@50 (else the largest K evaluated) of ALS and of the popularity baseline."""
    ks = sorted(int(key.rsplit("_", 1)[1]) for key in summary if key.startswith("als_recall_at_"))
    if not ks:
        return f"run {summary.get('run_id', '-')}"
    k = 50 if 50 in ks else ks[-1]
    return (f"Recall@{k} {_measure(summary, f'als_recall_at_{k}')} (popularity "
            f"{_measure(summary, f'popularity_recall_at_{k}')}), run {summary.get('run_id', '-')}")


def train_results(summary: dict) -> str:
    """Test AUC and gAUC of the attention ranker (and of mean pooling when it was trained)."""
    models = [name for name in ("attention", "mean") if f"test_{name}_auc" in summary]
    measured = "; ".join(f"{name} test AUC {_measure(summary, f'test_{name}_auc')} gAUC "
                         f"{_measure(summary, f'test_{name}_gauc')}" for name in models) or "no test rows"
    return f"{measured}; run {summary.get('run_id', '-')}, registered version {summary.get('version', '-')}"


def promote_results(summary: dict) -> str:
    """The gate's decision with both models' AUC and gAUC on the same rows."""
    versions = {"challenger": summary.get("challenger", "-"), "champion": summary.get("compared_with", "-")}
    sides = [f"{who} {versions[who]} (AUC {_measure(summary, f'{who}_auc')}, gAUC {_measure(summary, f'{who}_gauc')})"
             for who in versions if f"{who}_auc" in summary]
    reason = f"; {summary['reason']}" if summary.get("reason") else ""
    return (f"{summary.get('decision', '-')}: {' vs '.join(sides) or 'nothing scored'}{reason}; "
            f"champion now {summary.get('champion', '-')}")


def score_results(summary: dict) -> str:
    return (f"{summary.get('rows', '-')} recommendations for {summary.get('users', '-')} users by version "
            f"{summary.get('model_version', '-')}")


RESULTS = {"als": als_results, "train": train_results, "promote": promote_results, "score": score_results}


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
