"""Spark clean + features vs the same cleaning and sequence building in DuckDB, one machine.

    .venv/bin/python benchmarks/etl_bench.py --events 1000000 --events 10000000 [--conf …] [--set k=v] [--date D]

`--set` overrides apply after the sizes' own (users, items, files per day, local[2]);
`--date` is the day `features` runs for (default: the last generated day). Ends with
`summary: ratio_1m=… ratio_10m=… range_ratio_1m=… …` (clean + features, Spark over DuckDB,
per size; `range_` with Spark's clean of all days in one job).

For each size the generator writes a data set (users scale with the size, 14 days), then
each engine runs in its own subprocess (so peak memory is that engine's alone, JVM and
Python workers included) on the same two cores:
- Spark (`local[2]`): `recpipe clean` for every day, then `recpipe features` for the last
  day, exactly as the pipeline runs them; then, on a second copy of the raw days, all of
  them cleaned in one job (`recpipe clean-range`, as `make run` and backfills do) and
  features again.
- DuckDB (2 threads): the same reject rules in the same precedence over the same lines,
  day by day, with duplicates checked against the earlier days' accepted ids, and the
  users' last-L behaviour sequences as of the last day. No features or samples: the
  reference covers the part of the work both do, so its time is a lower bound.
Both engines' accepted/rejected counts are compared; a disagreement is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

from recpipe.config import load_config  # noqa: E402
from bench_pipeline import PeakRss, add_pipeline_args  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402

USERS_PER_MILLION = 20000
ITEMS_PER_MILLION = 5000

ISO_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


def size_overrides(events: int, root: str) -> list[str]:
    scale = events / 1_000_000
    return [f"paths.root={root}", f"generate.users={int(USERS_PER_MILLION * scale)}",
            f"generate.items={max(int(ITEMS_PER_MILLION * scale ** 0.5), 500)}",
            f"generate.events_per_file={max(250_000, events // 40)}", "spark.master=local[2]",
            "spark.driver_memory=6g", "spark.extra={spark.ui.enabled: 'false'}"]


def run_spark(cfg, last: dt.date | None = None, in_one_job: bool = False) -> dict:
    """Spark's clean of every day, one job per day as the nightly runs it (or all days in
    one job, `clean.run_range`, as `recpipe clean-range` does), then features for the last."""
    from recpipe.etl import clean, features
    from recpipe.spark import get_spark

    spark = get_spark(cfg, "etl-bench")
    spark.sparkContext.setLogLevel("ERROR")
    dates = [d for d in cfg.generate.dates if last is None or d <= last]
    with PeakRss() as rss:
        started = time.perf_counter()
        reports = ([clean.run_range(spark, cfg, dates[0], dates[-1])] if in_one_job
                   else [clean.run(spark, cfg, date) for date in dates])
        clean_s = time.perf_counter() - started
        started = time.perf_counter()
        summary = features.run(spark, cfg, dates[-1])
        features_s = time.perf_counter() - started
    spark.stop()
    return {"clean_s": clean_s, "features_s": features_s, "peak_rss_mb": rss.peak / 2**20,
            "lines": sum(r["lines_read"] for r in reports), "accepted": sum(r["accepted"] for r in reports),
            "rejected": {reason: sum(r["rejected_by_reason"][reason] for r in reports)
                         for reason in reports[0]["rejected_by_reason"]},
            "sequences": summary.get("sequences")}


def duckdb_clean_sql(day: dt.date, cfg) -> str:
    """One day's lines classified with the cleaner's rules and precedence."""
    clean = cfg.clean
    path = f"{cfg.table_path('raw_events', day)}/*.json.gz"
    required = list(clean.required_fields)
    missing = " ".join(f"WHEN nullif(trim(coalesce(json_extract_string(json, '$.{f}'), '')), '') IS NULL THEN '{f}'" for f in required)
    types = ", ".join(f"'{t}'" for t in clean.event_types)
    day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + dt.timedelta(minutes=clean.future_tolerance_minutes)
    return f"""
    WITH lines AS (
        SELECT line FROM read_csv('{path}', columns={{'line': 'VARCHAR'}}, delim='\\x1f', quote='', escape='',
                                  header=false, auto_detect=false, compression='gzip', strict_mode=false)
    ), validated AS (
        SELECT line, CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE false END AS is_object FROM lines
    ), parsed AS (
        -- Only valid objects are parsed: DuckDB's JSON functions raise on malformed text.
        SELECT line, is_object, json,
               json_extract_string(json, '$.event_id') AS event_id,
               json_extract_string(json, '$.user_id') AS user_id,
               json_extract_string(json, '$.item_id') AS item_id,
               json_extract_string(json, '$.event_type') AS event_type,
               json_extract_string(json, '$.ts') AS ts_text,
               json_extract_string(json, '$.price') AS price_text,
               json_extract_string(json, '$.position') AS position_text
        FROM (SELECT *, CASE WHEN is_object THEN line END AS json FROM validated)
    ), timed AS (
        SELECT *,
               CASE WHEN regexp_full_match(ts_text, '-?[0-9]{{1,15}}') THEN make_timestamp(ts_text::BIGINT * 1000)
                    WHEN regexp_full_match(ts_text, '{ISO_TS[1:-1]}') THEN try_cast(ts_text AS TIMESTAMPTZ)::TIMESTAMP
               END AS ts,
               CASE {missing} END AS missing_field
        FROM parsed
    ), checked AS (
        SELECT *,
               CASE WHEN NOT is_object THEN 'malformed_json'
                    WHEN missing_field IS NOT NULL THEN 'missing_field'
                    WHEN event_type NOT IN ({types}) THEN 'unknown_event_type'
                    WHEN ts IS NULL THEN 'bad_timestamp'
                    WHEN ts > TIMESTAMP '{day_end.isoformat(sep=" ")}' THEN 'future_timestamp'
                    WHEN price_text IS NOT NULL AND coalesce(try_cast(price_text AS DOUBLE) < 0, true) THEN 'invalid_value'
                    WHEN position_text IS NOT NULL AND coalesce(try_cast(position_text AS INTEGER) < 0, true) THEN 'invalid_value'
               END AS reason
        FROM timed
    ), deduped AS (
        SELECT *,
               CASE WHEN reason IS NULL AND (
                        row_number() OVER (PARTITION BY event_id ORDER BY line) > 1
                        OR event_id IN (SELECT event_id FROM accepted_ids))
                    THEN 'duplicate_event' ELSE reason END AS reason2
        FROM checked
    ), bots AS (
        SELECT DISTINCT user_id FROM (
            SELECT user_id, time_bucket(INTERVAL '{clean.bot_window_minutes} minutes', ts) AS bucket, count(*) AS n
            FROM deduped WHERE reason2 IS NULL GROUP BY ALL)
        WHERE n > {clean.bot_max_events_per_window}
    )
    SELECT line, event_id, user_id, item_id, event_type, ts,
           CASE WHEN reason2 IS NULL AND user_id IN (SELECT user_id FROM bots) THEN 'bot_traffic' ELSE reason2 END AS reason
    FROM deduped
    """


def run_duckdb(cfg) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2; SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE accepted_ids (event_id VARCHAR)")
    con.execute("CREATE TABLE events (user_id VARCHAR, item_id VARCHAR, event_type VARCHAR, ts TIMESTAMP)")
    counts: dict[str, int] = {}
    lines = 0
    with PeakRss() as rss:
        started = time.perf_counter()
        for day in cfg.generate.dates:
            con.execute(f"CREATE OR REPLACE TABLE day AS {duckdb_clean_sql(day, cfg)}")
            con.execute("INSERT INTO accepted_ids SELECT event_id FROM day WHERE reason IS NULL")
            con.execute("INSERT INTO events SELECT user_id, item_id, event_type, ts FROM day WHERE reason IS NULL")
            for reason, n in con.execute("SELECT coalesce(reason, 'accepted'), count(*) FROM day GROUP BY 1").fetchall():
                counts[reason] = counts.get(reason, 0) + n
            lines += con.execute("SELECT count(*) FROM day").fetchone()[0]
        clean_s = time.perf_counter() - started
        started = time.perf_counter()
        cutoff = dt.datetime.combine(cfg.generate.dates[-1], dt.time())
        kinds = ", ".join(f"'{t}'" for t in cfg.features.history_event_types)
        sequences = con.execute(f"""
            SELECT count(*) FROM (
                SELECT user_id, list(item_id ORDER BY ts) AS hist FROM (
                    SELECT user_id, item_id, ts,
                           row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, item_id) AS recent
                    FROM events WHERE ts < TIMESTAMP '{cutoff.isoformat(sep=" ")}' AND event_type IN ({kinds}))
                WHERE recent <= {cfg.features.history_length}
                GROUP BY user_id)""").fetchone()[0]
        sequences_s = time.perf_counter() - started
    accepted = counts.pop("accepted", 0)
    return {"clean_s": clean_s, "features_s": sequences_s, "peak_rss_mb": rss.peak / 2**20, "lines": lines,
            "accepted": accepted, "rejected": counts, "sequences": sequences}


def child(engine: str, conf: str, overrides: list[str], date: dt.date | None) -> None:
    cfg = load_config(conf, overrides)
    result = run_duckdb(cfg) if engine == "duckdb" else run_spark(cfg, date, in_one_job=engine == "spark-range")
    print("RESULT " + json.dumps(result))


def measure(engine: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", engine, "--conf", args.conf,
               *[arg for o in overrides for arg in ("--set", o)], *(["--date", args.date.isoformat()] if args.date else [])]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{engine} run failed:\n{out.stderr[-4000:]}")


def bench(events: int, workdir: str, args: argparse.Namespace) -> dict:
    from recpipe.generate import run as generate

    root = os.path.join(workdir, f"root-{events}")
    overrides = [*size_overrides(events, root), *args.overrides]
    started = time.perf_counter()
    manifest = generate(load_config(args.conf, overrides))
    generate_s = time.perf_counter() - started
    spark = measure("spark", args, overrides)
    duck = measure("duckdb", args, overrides)
    # The one-job clean on a lake of its own: the same raw days, generated again (same seed).
    range_overrides = [*size_overrides(events, root + "-range"), *args.overrides]
    generate(load_config(args.conf, range_overrides))
    spark_range = measure("spark-range", args, range_overrides)
    lines = manifest["totals"]["lines"]
    duck_s = duck["clean_s"] + duck["features_s"]

    def agrees(run: dict) -> bool:
        return run["accepted"] == duck["accepted"] and all(run["rejected"].get(r, 0) == n
                                                           for r, n in duck["rejected"].items())
    return {
        "events_requested": events, "lines": lines, "generate_s": generate_s,
        "spark": spark, "spark_range": spark_range, "duckdb": duck,
        "spark_clean_lines_per_s": lines / spark["clean_s"], "duckdb_clean_lines_per_s": lines / duck["clean_s"],
        "clean_ratio_spark_over_duckdb": spark["clean_s"] / duck["clean_s"],
        "total_ratio_spark_over_duckdb": (spark["clean_s"] + spark["features_s"]) / duck_s,
        "range_clean_ratio_spark_over_duckdb": spark_range["clean_s"] / duck["clean_s"],
        "range_total_ratio_spark_over_duckdb": (spark_range["clean_s"] + spark_range["features_s"]) / duck_s,
        "counts_agree": agrees(spark) and agrees(spark_range),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, action="append", help="data set size in events (repeatable)")
    parser.add_argument("--workdir", help="where the generated data goes (default: a temp dir)")
    parser.add_argument("--out", help="also write the report as JSON here")
    parser.add_argument("--child", choices=["spark", "spark-range", "duckdb"], help=argparse.SUPPRESS)
    add_pipeline_args(parser)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.conf, args.overrides, args.date)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="etl-bench-")
    report = [bench(n, workdir, args) for n in (args.events or [1_000_000])]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    ratios = {f"ratio_{r['events_requested'] / 1e6:g}m": round(r["total_ratio_spark_over_duckdb"], 2) for r in report}
    ratios |= {f"range_ratio_{r['events_requested'] / 1e6:g}m": round(r["range_total_ratio_spark_over_duckdb"], 2)
               for r in report}
    print(summary_line({**ratios, "runs": report}))


if __name__ == "__main__":
    main()
