"""`recpipe history --cutoff D`: the whole-history run, for data that spans years.

The nightly cleans one day and trains on a window of days before it. A data set such as
MovieLens is years of ratings delivered at once, so this run instead:

1. cleans everything before D in one job, then everything from D on in a second one
   (`clean.run_range`): two dictionary and catalogue snapshots, the first of which, dated
   D - 1, is the one the features as of D read;
2. sets the windows from the days the raw log holds: the train windows of the features
   and of ALS reach back to its first day, the look-back covers all of it, and
   `evaluation.days` runs from D to its last day (a temporal split: everything before the
   cut-off trains, everything from it on evaluates);
3. runs the unchanged stages `features`, `als` and `train` for D.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

from recpipe.config import Config
from recpipe.errors import ConfigError, DataError
from recpipe.etl import clean
from recpipe.lock import describe_command
from recpipe.runner import DONE, SKIPPED, StageOutcome, format_outcomes, running

log = logging.getLogger("recpipe.history")

STAGES = ("features", "als", "train")


def clean_in_one_job(cfg: Config, first: dt.date, last: dt.date, *, force: bool = False) -> StageOutcome:
    """`recpipe clean-range`: clean the raw days first..last in one Spark job under the
    lock (`clean.run_range`), as earlier nightlies would have, in a fraction of the time
    of one job per day. Skipped when every raw day of the range has committed events and
    the dictionaries have a snapshot dated `last` (what the range clean leaves), unless
    `force`."""
    from recpipe import io

    with running(cfg, describe_command()) as runner:
        days = [d for d in clean.raw_days(cfg) if first <= d <= last]
        if not days:
            raise DataError(f"clean-range: no raw events for {first}..{last} under {cfg.table_path('raw_events')}")
        done = (all(io.table_exists(cfg, "events", d) for d in days)
                and io.latest_day(cfg, "dim_users", last) == last)
        if done and not force:
            log.info("clean %s..%s: skipping, every day is cleaned (--force reruns)", first, last)
            return StageOutcome(last, "clean", SKIPPED, note=f"{first}..{last}")
        started = time.perf_counter()
        with runner.heartbeat(f"clean {first}..{last}"):
            report = clean.run_range(runner.spark, cfg, first, last)
    return StageOutcome(last, "clean", DONE, time.perf_counter() - started, report["lines_read"], report["accepted"],
                        note=f"{first}..{last}", summary=report)


def cutoff_date(cfg: Config, cutoff: dt.date | None) -> dt.date:
    """The command line's --cutoff, else `history.cutoff`; ConfigError when neither is set."""
    if cutoff is not None:
        return cutoff
    if not cfg.history.cutoff:
        raise ConfigError("history: no cut-off; pass --cutoff YYYY-MM-DD or set history.cutoff")
    try:
        return dt.date.fromisoformat(cfg.history.cutoff)
    except ValueError:
        raise ConfigError(f"history.cutoff: {cfg.history.cutoff!r} is not a date (YYYY-MM-DD)") from None


def data_span(cfg: Config, cutoff: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last day of the raw log; DataError unless D leaves days on both sides."""
    days = clean.raw_days(cfg)
    if not days:
        raise DataError(f"history: no raw events under {cfg.table_path('raw_events')}")
    first, last = days[0], days[-1]
    if not first < cutoff <= last:
        raise DataError(f"history: cut-off {cutoff} must lie after the first day {first} and on or before "
                        f"the last day {last} of the raw events")
    return first, last


def whole_history_config(cfg: Config, cutoff: dt.date, first: dt.date, last: dt.date) -> Config:
    """`cfg` with its windows stretched over the data: train on every day before D,
    evaluate on every day from D on."""
    train_days = (cutoff - first).days
    eval_days = (last - cutoff).days + 1
    return dataclasses.replace(
        cfg,
        features=dataclasses.replace(cfg.features, train_days=train_days, lookback_days=train_days + eval_days),
        als=dataclasses.replace(cfg.als, train_days=train_days),
        evaluation=dataclasses.replace(cfg.evaluation, days=eval_days),
    )


def run(cfg: Config, cutoff: dt.date | None = None) -> list[StageOutcome]:
    """Clean the whole log in two jobs, then build features, ALS and the ranker as of D,
    all under the root's lock; the stages go through the runner with the stretched
    windows, so a rerun skips what is done.

    Returns:
        One outcome per step (`clean` twice, then each stage), for `format_outcomes`.
    """
    from recpipe import stages  # the training stage among them: the report reads this module's windows only

    cutoff = cutoff_date(cfg, cutoff)
    first, last = data_span(cfg, cutoff)
    history_cfg = whole_history_config(cfg, cutoff, first, last)
    log.info("whole history: train %s..%s (%d days), evaluate %s..%s (%d days)", first,
             cutoff - dt.timedelta(days=1), history_cfg.features.train_days, cutoff, last,
             history_cfg.evaluation.days)
    outcomes = []
    with running(history_cfg, describe_command()) as runner:
        for start, end in ((first, cutoff - dt.timedelta(days=1)), (cutoff, last)):
            started = time.perf_counter()
            report = clean.run_range(runner.spark, history_cfg, start, end)
            outcomes.append(StageOutcome(end, "clean", DONE, time.perf_counter() - started, report["lines_read"],
                                         report["accepted"], note=f"{start}..{end}", summary=report))
        outcomes += [runner.run(stages.get(name), cutoff) for name in STAGES]
    log.info("whole history as of %s done\n%s", cutoff, format_outcomes(outcomes))
    return outcomes
