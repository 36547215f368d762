"""The clean stage's accounting: outcome counts, the reconciliation and the quality report.

Every line read must end as an accepted event or as one reject:
`lines_read == accepted + sum(rejected[reason])`. The job checks this before it writes
anything, and the report (JSON beside the data and in MLflow) shows the numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe import io, paths, tables
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.names import ETL_EXPERIMENT
from recpipe.schema import DT, EVENT_TYPE, ITEM_ID, REJECT_REASON, REJECT_REASONS, TS, USER_ID

REPORT_FILE = "quality.json"
_LATE = "_late"

log = logging.getLogger("recpipe.clean")


@dataclass(frozen=True)
class Outcomes:
    """How a day's lines ended: small numbers collected from one grouped count."""

    accepted_by_type: dict[str, int]
    rejected_by_reason: dict[str, int]
    late_events: int

    @property
    def accepted(self) -> int:
        return sum(self.accepted_by_type.values())

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def count_outcomes(classified: DataFrame, *, day: dt.date | None, event_types: Sequence[str]) -> Outcomes:
    """Accepted events by type (and how many are late: `ts` before D), rejects by reason.

    Args:
        classified: one row per line read, `reject_reason` null for accepted events.
        day: the day D; an accepted event with `ts` before D's UTC midnight is late. None
            when several days are cleaned at once: each row's own `dt` is its D.
        event_types: the accepted types, reported with zeros where absent.
    """
    if day is not None:
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        midnight_micros = F.lit(int(midnight.timestamp()) * 1_000_000)
    else:
        midnight_micros = F.unix_date(F.col(DT)).cast("long") * F.lit(86_400_000_000)
    accepted = F.col(REJECT_REASON).isNull()
    late = accepted & (F.unix_micros(F.col(TS)) < midnight_micros)
    rows = (
        classified
        .groupBy(REJECT_REASON, F.when(accepted, F.col(EVENT_TYPE)).alias(EVENT_TYPE), late.alias(_LATE))
        .count()
        .collect()  # at most reasons + 2 x types rows
    )
    by_type = {name: 0 for name in event_types}
    by_reason = {reason: 0 for reason in REJECT_REASONS}
    late_events = 0
    for row in rows:
        if row[REJECT_REASON] is None:
            by_type[row[EVENT_TYPE]] = by_type.get(row[EVENT_TYPE], 0) + row["count"]
            late_events += row["count"] if row[_LATE] else 0
        else:
            by_reason[row[REJECT_REASON]] = by_reason.get(row[REJECT_REASON], 0) + row["count"]
    return Outcomes(accepted_by_type=by_type, rejected_by_reason=by_reason, late_events=late_events)


def reconcile(lines_read: int, outcomes: Outcomes) -> None:
    """Raise DataError unless every line read is accounted for exactly once."""
    if lines_read != outcomes.accepted + outcomes.rejected:
        raise DataError(
            f"clean lost or duplicated lines: read {lines_read}, but accepted {outcomes.accepted} + "
            f"rejected {outcomes.rejected} = {outcomes.accepted + outcomes.rejected} "
            f"(rejected by reason: {outcomes.rejected_by_reason})"
        )


def distinct_ids(accepted: DataFrame) -> dict[str, int]:
    """Distinct users and items among the accepted events."""
    row = accepted.agg(F.countDistinct(USER_ID).alias("users"), F.countDistinct(ITEM_ID).alias("items")).first()
    return {"users": row["users"], "items": row["items"]}


def build_report(*, day: dt.date, lines_read: int, outcomes: Outcomes, distinct: dict[str, int],
                 new_ids: dict[str, int], catalogue_items: int) -> dict:
    """The quality report of one day: plain JSON-serialisable numbers, nothing run-specific,
    so that a rerun on the same input writes the same report."""
    return {
        "date": day.isoformat(),
        "lines_read": lines_read,
        "accepted": outcomes.accepted,
        "rejected": outcomes.rejected,
        "rejected_by_reason": dict(outcomes.rejected_by_reason),
        "accepted_by_type": dict(outcomes.accepted_by_type),
        "late_events": outcomes.late_events,
        "distinct_users": distinct["users"],
        "distinct_items": distinct["items"],
        "new_ids": dict(new_ids),
        "catalogue_items": catalogue_items,
    }


def report_metrics(report: dict) -> dict[str, float]:
    """The report flattened into MLflow metric names (`rejected_bot_traffic`, `new_users`)."""
    metrics = {key: report[key] for key in ("lines_read", "accepted", "rejected", "late_events", "distinct_users",
                                            "distinct_items", "catalogue_items")}
    metrics.update({f"rejected_{reason}": n for reason, n in report["rejected_by_reason"].items()})
    metrics.update({f"accepted_{event_type}": n for event_type, n in report["accepted_by_type"].items()})
    metrics.update({f"new_{kind}": n for kind, n in report["new_ids"].items()})
    metrics["files_quarantined"] = len(report.get("quarantined_files", []))
    return {name: float(value) for name, value in metrics.items()}


def report_location(cfg: Config, day: dt.date) -> str:
    """The committed report of a day (where it would be, when there is none)."""
    return paths.join_uri(tables.reader_location(cfg, "quality", day), REPORT_FILE)


def write_report(cfg: Config, day: dt.date, report: dict) -> str:
    """Write the report as JSON, committed with the day's tables; returns where."""
    return io.write_file(cfg, "quality", day, REPORT_FILE, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())


def log_report(cfg: Config, day: dt.date, report: dict) -> str:
    """Log the report, its numbers and the resolved config to an MLflow run; returns its id."""
    import mlflow

    from recpipe.tracking import start_run

    with start_run(cfg, ETL_EXPERIMENT, run_name=f"clean-{day.isoformat()}",
                   tags={"date": day.isoformat(), "stage": "clean"}) as run:
        mlflow.log_metrics(report_metrics(report))
        mlflow.log_dict(report, REPORT_FILE)
        mlflow.log_dict(cfg.to_dict(), "config.yaml")
        return run.info.run_id
