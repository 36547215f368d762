"""The score stage's speed against the network's forward pass alone on the same rows.

On a data root where the nightly for D has run (it is run first where it has not), this
reruns the score stage for D through the runner (`--force`: it replaces D's
recommendations with the same champion's) twice in one session and times both: the first
run pays for the session's start (a cold JVM, as `recpipe score` alone does), the second
runs warm, as the stage does in the nightly, where it follows five stages in the same
session (the issue's figure, 270 s, was the nightly's). `ratio` is the warm run's,
`ratio_cold` the first's. Then it takes a sample of the
same candidate rows, already turned into the network's input tensors, and times only the
forward pass over them on the same cores: the network's plain forward (each user's
history repeated for each candidate, the reference) and, for the record, the forward with
each user's history once (`owner`, what the stage runs). The ratio of the stage's rate to
the plain forward's is the share of the stage's time that is the network's own
arithmetic: 1.0 would mean reading candidates, joining histories and features, handing
batches to Python, the top-N window and the write cost nothing.

    .venv/bin/python benchmarks/score_bench.py [--conf conf/local.yaml] [--set k=v] [--date D]

Ends with `summary: rows_per_s=… forward_rows_per_s=… ratio=…`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_args(parser)
    parser.add_argument("--sample-rows", type=int, default=200_000, help="rows timed for the forward pass alone")
    parser.add_argument("--repeat", type=int, default=3, help="timed forward passes over the sample (best kept)")
    return parser.parse_args(argv)


def stage_rate(cfg, date) -> dict:
    """Seconds of the score stage for D (through the runner, forced), in a new session and
    then again in the same, warm one, and the rows it scored."""
    from pyspark.sql import functions as F
    from recpipe import stages
    from recpipe.registry.score import CANDIDATES, user_rows
    from recpipe.runner import running

    with running(cfg, "score-bench") as runner:
        cold = runner.run(stages.get("score"), date, force=True)
        warm = runner.run(stages.get("score"), date, force=True)
        users = user_rows(runner.spark, cfg, date, exclude_history=cfg.score.exclude_history)
        rows = users.agg(F.sum(F.size(CANDIDATES))).first()[0]
        return {"stage_s": round(warm.seconds, 2), "cold_stage_s": round(cold.seconds, 2), "rows": rows,
                "spark": runner.spark}


def forward_rate(spark, cfg, date, sample_rows: int, repeat: int) -> dict:
    """Rows per second of the champion's forward pass alone, on input tensors built
    beforehand from `sample_rows` candidate rows, with torch on as many threads as Spark
    has cores."""
    import pyarrow as pa
    import torch
    from recpipe.names import CHAMPION, RANKER_MODEL
    from recpipe.registry.promote import client_for, version_by_alias
    from recpipe.registry.score import item_dense_table, network_arrays, pinned_scorer, user_rows
    from recpipe.tracking import tracking_uri

    version = version_by_alias(client_for(cfg), CHAMPION).version
    scorer = pinned_scorer(f"models:/{RANKER_MODEL}/{version}", tracking_uri(cfg))
    users = user_rows(spark, cfg, date, exclude_history=cfg.score.exclude_history)
    per_user = max(1, cfg.als.top_k)
    # Spark's own Arrow batches of the sample (what mapInArrow hands over; toPandas would
    # turn the candidate structs into Python objects).
    batch = pa.Table.from_batches(users.limit(max(1, sample_rows // per_user))._collect_as_arrow()).combine_chunks()
    batch = batch.to_batches()[0]
    arrays = network_arrays(batch, scorer.config.user_dense_dim, item_dense_table(spark, cfg, date),
                            scorer.config.item_dense_dim)
    torch.set_num_threads(spark.sparkContext.defaultParallelism)
    plain = scorer.lake_inputs(**arrays)  # each user's history repeated for each of their candidates
    per_user = scorer.lake_inputs(**{k: v for k, v in arrays.items() if k != "repeat"})
    owner = np.repeat(np.arange(len(arrays["repeat"])), arrays["repeat"])
    return {"forward_rows": len(arrays["item_idx"]), "threads": torch.get_num_threads(),
            "forward_s": best_seconds(lambda: scorer.forward(plain), repeat),
            "shared_forward_s": best_seconds(lambda: scorer.forward(per_user, owner), repeat)}


def best_seconds(work, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    ensure_nightly(args, date)
    stage = stage_rate(cfg, date)
    forward = forward_rate(stage.pop("spark"), cfg, date, args.sample_rows, args.repeat)
    rows_per_s = stage["rows"] / stage["stage_s"]
    cold_rows_per_s = stage["rows"] / stage["cold_stage_s"]
    forward_rows_per_s = forward["forward_rows"] / forward["forward_s"]
    shared_rows_per_s = forward["forward_rows"] / forward["shared_forward_s"]
    print(f"score stage: {stage['rows']:,} candidate rows in {stage['stage_s']} s warm = {rows_per_s:,.0f} rows/s; "
          f"{stage['cold_stage_s']} s in a new session = {cold_rows_per_s:,.0f} rows/s")
    print(f"forward pass alone: {forward['forward_rows']:,} rows in {forward['forward_s']} s on "
          f"{forward['threads']} threads = {forward_rows_per_s:,.0f} rows/s; with each user's history once "
          f"(what the stage runs): {forward['shared_forward_s']} s = {shared_rows_per_s:,.0f} rows/s")
    print(summary_line({"rows_per_s": round(rows_per_s), "forward_rows_per_s": round(forward_rows_per_s),
                        "ratio": round(rows_per_s / forward_rows_per_s, 3),
                        "ratio_cold": round(cold_rows_per_s / forward_rows_per_s, 3),
                        "shared_forward_rows_per_s": round(shared_rows_per_s),
                        "ratio_vs_shared": round(rows_per_s / shared_rows_per_s, 3), "rows": stage["rows"],
                        "stage_s": stage["stage_s"], "cold_stage_s": stage["cold_stage_s"]}))


if __name__ == "__main__":
    main()
