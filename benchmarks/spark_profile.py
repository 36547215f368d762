"""Where a Spark stage's seconds go: its event log, summed by the line of recpipe code that
started each job.

    .venv/bin/python benchmarks/spark_profile.py clean [--conf conf/local.yaml] [--set k=v] [--date D] [--top 15]
    .venv/bin/python benchmarks/spark_profile.py clean-range --first 2026-11-01 [--date D]
    .venv/bin/python benchmarks/spark_profile.py clean --warm    # the second run in one session

On a data root where the nightly for D has run (it is run first where it has not), this
reruns one Spark stage for D through the runner (`--force`, as `recpipe <stage> --force`),
or `clean-range` for first..D, with Spark's event log on, in a new session (a cold JVM,
as the nightly's first stage). With `--warm` it runs the stage twice in that session and
profiles the second run alone: what each day costs when many days run in one session
(a backfill, `benchmarks/etl_bench.py`). Then it reads the log back and reports:

- the stage's wall seconds, and how many of them a Spark job was running (`in_jobs_s`);
  the rest is the driver alone (planning, file listing, Python, MLflow);
- the executors' run time and CPU time summed over tasks, against wall x cores
  (`busy_share`: 1.0 would mean every core computing all the time);
- the jobs, stages and tasks, and per recpipe call site (the Python line whose action
  started the job) its jobs and seconds, the most expensive first.

Ends with `summary: wall_s=… in_jobs_s=… jobs=… busy_share=… …`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import tempfile
import time
from pathlib import Path

from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402

from recpipe.config import parse_date


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="a Spark stage of the nightly (clean, features, als, score), or clean-range")
    add_pipeline_args(parser)
    parser.add_argument("--first", type=parse_date, help="clean-range: the first day (default: the first generated)")
    parser.add_argument("--top", type=int, default=15, help="call sites listed")
    parser.add_argument("--warm", action="store_true", help="profile a second run in the same session")
    parser.add_argument("--event-log-dir", help="keep the event log here (default: a temp dir)")
    return parser.parse_args(argv)


def with_event_log(args: argparse.Namespace, cfg, log_dir: str) -> argparse.Namespace:
    """`args` with the profile's own Spark extras plus the event log's settings."""
    extra = {**cfg.spark.extra, "spark.eventLog.enabled": "true", "spark.eventLog.dir": Path(log_dir).as_uri(),
             "spark.eventLog.compress": "false"}
    return argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, f"spark.extra={json.dumps(extra)}"]})


def run_stage(args: argparse.Namespace, cfg, date) -> tuple[float, int]:
    """Wall seconds of the stage (or the range clean) for D, forced, in a new session (its
    second run there with `--warm`), and when that run started, in epoch milliseconds."""
    from recpipe import stages
    from recpipe.etl import clean
    from recpipe.runner import running

    with running(cfg, f"spark-profile {args.stage}") as runner:
        for _ in range(2 if args.warm else 1):
            started_ms, started = int(time.time() * 1000), time.perf_counter()
            if args.stage == "clean-range":
                clean.run_range(runner.spark, cfg, args.first or cfg.generate.dates[0], date)
            else:
                runner.run(stages.get(args.stage), date, force=True)
            seconds = time.perf_counter() - started
        runner.spark.stop()
    return seconds, started_ms


def has_inputs(cfg, stage: str, date) -> bool:
    """Whether the root already holds what the stage reads for D (then no nightly is run
    first: an ETL root of raw days is enough to profile `clean`)."""
    from recpipe import stages
    from recpipe.errors import DataError
    from recpipe.runner import require_inputs

    try:
        require_inputs(cfg, stages.get("clean" if stage == "clean-range" else stage), date)
    except DataError:
        return False
    return True


@dataclasses.dataclass
class Job:
    site: str
    started_ms: int
    ended_ms: int = 0
    stages: int = 0


def read_event_log(log_dir: str, since_ms: int = 0) -> dict:
    """Jobs (with their call sites), stages, tasks and executor times from the newest log
    under `log_dir`, of the jobs submitted and tasks launched from `since_ms` on."""
    log_file = max((p for p in Path(log_dir).iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
    jobs, tasks, run_ms, cpu_ns, cores = {}, 0, 0, 0, 0
    with log_file.open() as lines:
        for line in lines:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerJobStart":
                if event["Submission Time"] < since_ms:
                    continue
                jobs[event["Job ID"]] = Job(job_site(event), event["Submission Time"],
                                            stages=len(event.get("Stage IDs", [])))
            elif kind == "SparkListenerJobEnd":
                if event["Job ID"] in jobs:
                    jobs[event["Job ID"]].ended_ms = event["Completion Time"]
            elif kind == "SparkListenerTaskEnd":
                if event["Task Info"]["Launch Time"] < since_ms:
                    continue
                tasks += 1
                metrics = event.get("Task Metrics") or {}
                run_ms += metrics.get("Executor Run Time", 0)
                cpu_ns += metrics.get("Executor CPU Time", 0)
            elif kind == "SparkListenerExecutorAdded":
                cores += event["Executor Info"]["Total Cores"]
    return {"jobs": jobs, "tasks": tasks, "run_s": run_ms / 1e3, "cpu_s": cpu_ns / 1e9, "cores": cores}


def job_site(event: dict) -> str:
    """The recpipe line that started the job; for a job PySpark gives no Python call site
    (a DataFrame write, `count`), the JVM's name of its last stage, such as `parquet at …`."""
    props = event.get("Properties") or {}
    if "callSite.short" in props:
        return call_site(props["callSite.short"])
    stages = event.get("Stage Infos") or []
    return f"({call_site(stages[-1]['Stage Name'])})" if stages else "?"


def call_site(short: str) -> str:
    """`count at /…/lib/recpipe/etl/clean.py:148` as `count at etl/clean.py:148`."""
    return re.sub(r" at .*?/recpipe/", " at ", short)


def union_seconds(intervals: list[tuple[int, int]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals, in ms."""
    covered, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            covered += end - start
            reach = end
        elif end > reach:
            covered += end - reach
            reach = end
    return covered / 1e3


def by_call_site(jobs: dict[int, Job]) -> list[tuple[str, int, float]]:
    """(call site, jobs, seconds of those jobs), the most seconds first."""
    seconds, counts = collections.Counter(), collections.Counter()
    for job in jobs.values():
        seconds[job.site] += (job.ended_ms - job.started_ms) / 1e3
        counts[job.site] += 1
    return [(site, counts[site], round(s, 2)) for site, s in seconds.most_common()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    if not has_inputs(cfg, args.stage, date):
        ensure_nightly(args, date)
    log_dir = args.event_log_dir or tempfile.mkdtemp(prefix="spark-profile-")
    os.makedirs(log_dir, exist_ok=True)
    profiled = with_event_log(args, cfg, log_dir)
    profiled_cfg, _ = pipeline_config(profiled)
    wall_s, started_ms = run_stage(profiled, profiled_cfg, date)
    found = read_event_log(log_dir, since_ms=started_ms)
    jobs = found["jobs"]
    in_jobs_s = union_seconds([(job.started_ms, job.ended_ms) for job in jobs.values()])
    cores = found["cores"] or 1
    print(f"# {args.stage} for {date}{' (warm: its second run)' if args.warm else ''}: {wall_s:.1f} s wall, {in_jobs_s:.1f} s with a Spark job running, "
          f"{len(jobs)} jobs, {sum(j.stages for j in jobs.values())} stages, {found['tasks']} tasks; executors "
          f"ran {found['run_s']:.1f} s ({found['cpu_s']:.1f} s CPU) on {cores} cores")
    print("| call site | jobs | seconds |\n|---|---|---|")
    for site, count, seconds in by_call_site(jobs)[:args.top]:
        print(f"| {site} | {count} | {seconds} |")
    print(f"# event log: {log_dir}")
    print(summary_line({
        "stage": args.stage, "warm": args.warm, "wall_s": round(wall_s, 2), "in_jobs_s": round(in_jobs_s, 2),
        "driver_only_s": round(wall_s - in_jobs_s, 2), "jobs": len(jobs),
        "stages": sum(j.stages for j in jobs.values()), "tasks": found["tasks"],
        "executor_run_s": round(found["run_s"], 2), "executor_cpu_s": round(found["cpu_s"], 2),
        "busy_share": round(found["run_s"] / (wall_s * cores), 3),
    }))


if __name__ == "__main__":
    main()
