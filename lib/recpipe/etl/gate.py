"""`recpipe quality --date D`: the data-quality gate between clean and the rest of the nightly.

It reads D's clean report and those of the trailing days, and fails the day when

- the raw day is empty (no line read);
- the day's line count is outside [min_line_ratio, max_line_ratio] times the median of
  the trailing days' counts;
- a reject reason's share of the lines read is above its `max_reject_share`;
- an event type seen on every trailing day is missing, or one none of them had appears;
- more files were quarantined than `max_quarantined_files`.

A failing day raises `QualityGateFailed` naming each check and its numbers: the nightly
stops there with exit code 2 and nothing is trained, promoted or scored. With
`quality_gate.accept` (`--accept-quality`) the operator proceeds on purpose: the failed
checks are logged as warnings and recorded in an MLflow run of the ETL experiment. The
first days, without trailing reports, are judged on what needs no history; so is the day
after a whole-history run, whose one report covers the range, not a day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics

from recpipe import paths
from recpipe.config import Config, QualityGateConfig
from recpipe.errors import ConfigError, DataError
from recpipe.etl.quality import report_location
from recpipe.names import ETL_EXPERIMENT
from recpipe.schema import REJECT_REASONS
from recpipe.stage import Option, Partition, Stage

log = logging.getLogger("recpipe.quality")

ACCEPTED_TAG = "quality_gate"
ACCEPT_OPTION = Option(("--accept-quality",), dict(
    dest="overrides", action="append_const", const="quality_gate.accept=true",
    help="go on past a failed data-quality gate on purpose (as quality_gate.accept=true; recorded in MLflow)"))


class QualityGateFailed(DataError):
    """Day D failed the data-quality gate; the message names the checks and their numbers."""


def run(spark, cfg: Config, date: dt.date) -> dict:
    """Judge day D; returns the verdict. Raises QualityGateFailed unless D passes or is accepted."""
    settings = cfg.quality_gate
    check_settings(settings)
    report = read_report(cfg, date)
    trailing = [r for day in trailing_days(date, settings.trailing_days)
                if (r := read_report(cfg, day, missing_ok=True)) and covers_one_day(r)]
    failures = failed_checks(report, trailing, settings)
    verdict = {"date": date.isoformat(), "trailing_reports": len(trailing), "failures": failures,
               "accepted": bool(failures) and settings.accept}
    if not failures:
        log.info("quality %s: passed (%d trailing days)", date, len(trailing))
        return verdict
    message = f"quality gate failed for {date}: " + "; ".join(failures)
    if not settings.accept:
        raise QualityGateFailed(message + ". Nothing after the gate ran; fix the input and rerun, or pass "
                                          "--accept-quality to proceed on purpose")
    log.warning("%s; accepted on purpose (quality_gate.accept), the nightly goes on", message)
    verdict["mlflow_run"] = record_acceptance(cfg, date, failures)
    return verdict


def failed_checks(report: dict, trailing: list[dict], settings: QualityGateConfig) -> list[str]:
    """One sentence with the numbers for each check the day fails; empty when it passes."""
    lines = report["lines_read"]
    failures = []
    if lines == 0:
        failures.append("empty raw day: 0 lines read")
    if trailing and lines:
        usual = statistics.median(r["lines_read"] for r in trailing)
        ratio = lines / usual if usual else float("inf")
        if not settings.min_line_ratio <= ratio <= settings.max_line_ratio:
            failures.append(f"line count {lines:,} is {ratio:.2f} x the median {usual:,.0f} of the last "
                            f"{len(trailing)} days (allowed {settings.min_line_ratio}..{settings.max_line_ratio})")
    for reason in REJECT_REASONS:
        rejected = report["rejected_by_reason"].get(reason, 0)
        share = rejected / lines if lines else 0.0
        if share > settings.max_reject_share[reason]:
            failures.append(f"{reason} rejects {rejected:,} are {share:.1%} of {lines:,} lines "
                            f"(allowed {settings.max_reject_share[reason]:.1%})")
    if trailing and lines and settings.check_event_types:
        failures += event_type_changes(report, trailing)
    quarantined = report.get("quarantined_files", [])
    if len(quarantined) > settings.max_quarantined_files:
        names = ", ".join(q["file"].rsplit("/", 1)[-1] for q in quarantined)
        failures.append(f"{len(quarantined)} raw file(s) quarantined (allowed {settings.max_quarantined_files}): {names}")
    return failures


def event_type_changes(report: dict, trailing: list[dict]) -> list[str]:
    def present(r: dict) -> set[str]:
        return {kind for kind, n in r["accepted_by_type"].items() if n > 0}

    today = present(report)
    always = set.intersection(*[present(r) for r in trailing])
    ever = set.union(*[present(r) for r in trailing])
    changes = []
    if always - today:
        changes.append(f"event types missing (seen on each of the last {len(trailing)} days): "
                       f"{', '.join(sorted(always - today))}")
    if today - ever:
        changes.append(f"new event types (on none of the last {len(trailing)} days): {', '.join(sorted(today - ever))}")
    return changes


def covers_one_day(report: dict) -> bool:
    """False for the report of a range clean (history): its counts are many days', not a day's usual."""
    return report.get("first_date", report["date"]) == report["date"]


def trailing_days(date: dt.date, count: int) -> list[dt.date]:
    return [date - dt.timedelta(days=n) for n in range(1, count + 1)]


def read_report(cfg: Config, day: dt.date, missing_ok: bool = False) -> dict | None:
    """D's clean report; None for a missing (or unreadable) trailing day's when `missing_ok`."""
    location = report_location(cfg, day)
    try:
        return json.loads(paths.read_bytes(location))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise DataError(f"quality {day}: no clean report at {location}; run `recpipe clean --date {day}` first")
    except ValueError as err:
        if missing_ok:
            log.warning("quality: ignoring the unreadable report %s (%s)", location, err)
            return None
        raise DataError(f"quality {day}: the clean report {location} is not valid JSON ({err}); clean {day} again")


def check_settings(settings: QualityGateConfig) -> None:
    """ConfigError for a band or a share that cannot mean anything."""
    if settings.trailing_days < 1:
        raise ConfigError(f"quality_gate.trailing_days must be at least 1, got {settings.trailing_days}")
    if not 0 <= settings.min_line_ratio <= 1 <= settings.max_line_ratio:
        raise ConfigError(f"quality_gate: need 0 <= min_line_ratio <= 1 <= max_line_ratio, got "
                          f"{settings.min_line_ratio} and {settings.max_line_ratio}")
    shares = settings.max_reject_share
    if set(shares) != set(REJECT_REASONS):
        raise ConfigError(f"quality_gate.max_reject_share must give every reject reason ({', '.join(REJECT_REASONS)}); "
                          f"unknown: {sorted(set(shares) - set(REJECT_REASONS))}, "
                          f"missing: {sorted(set(REJECT_REASONS) - set(shares))}")
    for reason, share in shares.items():
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ConfigError(f"quality_gate.max_reject_share.{reason} must be a share in 0..1, got {share!r}")
    if settings.max_quarantined_files < 0:
        raise ConfigError(f"quality_gate.max_quarantined_files must be >= 0, got {settings.max_quarantined_files}")


def record_acceptance(cfg: Config, date: dt.date, failures: list[str]) -> str:
    """An MLflow run that says day D failed these checks and was accepted on purpose."""
    import mlflow

    from recpipe.tracking import start_run

    with start_run(cfg, ETL_EXPERIMENT, run_name=f"quality-gate-{date.isoformat()}",
                   tags={"date": date.isoformat(), "stage": "quality", ACCEPTED_TAG: "accepted"}) as run:
        mlflow.log_dict({"date": date.isoformat(), "failed_checks": failures, "accepted": True}, "quality_gate.json")
        mlflow.log_metric("failed_checks", len(failures))
        return run.info.run_id


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    return [Partition("quality", date, required=True),
            *[Partition("quality", day) for day in trailing_days(date, cfg.quality_gate.trailing_days)]]


STAGE = Stage(
    name="quality",
    help="the data-quality gate: D's clean report against the trailing days; a bad day stops the nightly (exit 2)",
    # `accept` is left out: a day accepted once stays accepted while its reports are unchanged.
    config=tuple(f"quality_gate.{key}" for key in ("trailing_days", "min_line_ratio", "max_line_ratio",
                                                   "max_reject_share", "check_event_types", "max_quarantined_files")),
    reads=reads,
    writes=lambda cfg, date: [],
    run=run,
    rows=lambda verdict: (None, None),
    note=lambda verdict: "accepted: " + "; ".join(verdict["failures"]) if verdict.get("accepted") else "",
    options=(ACCEPT_OPTION,),
)
