"""The promote gate's scoring against the consumer path: the registered pyfunc's `predict`
with MLflow's signature check on every row, and the same loaded model without it.

On a data root where the nightly for D has run (it is run first where it has not), this
loads the champion version as consumers load it and takes the gate's rows of D (the
`promote.split` of `ranker_input`, as string ids: `registry.promote.gate_rows`), repeated
to `--rows` rows if asked. Then, in interleaved rounds (best kept), it times

- `consumer`: `model.predict(frame)`, what a consumer (and `mlflow.pyfunc.spark_udf`)
  runs: MLflow checks every row's array columns against the signature, then the model
  scores;
- `gate`: `registry.promote.predict`, the gate's way: the first `promote.checked_rows`
  rows through `model.predict`, every row through the loaded model's own `predict`;
- `model_only`: the loaded model's own `predict` on every row (no signature check).

and reports rows/s of each, `gate / consumer` (the gate's speed-up) and the share of the
consumer path's time that is the signature check (1 - consumer / model_only rows/s).

    .venv/bin/python benchmarks/gate_bench.py [--rows 300000] [--conf conf/local.yaml] [--set k=v] [--date D]

Ends with `summary: rows=… consumer_rows_per_s=… gate_rows_per_s=… gate_vs_consumer=… check_share=…`.
"""

from __future__ import annotations

import argparse
import time

from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_args(parser)
    parser.add_argument("--rows", type=int, default=0, help="repeat the gate's rows up to this many (0: as they are)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best kept)")
    return parser.parse_args(argv)


def gate_frame(cfg, date, rows: int):
    """The gate's consumer frame of D, repeated up to `rows` rows when that is more."""
    import pandas as pd

    from recpipe.registry.promote import gate_rows
    from recpipe.serving.consumer import consumer_frame
    from recpipe.runner import running

    with running(cfg, "gate-bench") as runner:
        arrays, names = gate_rows(runner.spark, cfg, date)
        frame = consumer_frame(arrays, names)
        runner.spark.stop()
    if rows > len(frame):
        frame = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).iloc[:rows]
    return frame


def gate_pieces(frame, rows_per_frame: int):
    """The frame in the gate's pieces (`promote.gate_frames` builds them from the arrays)."""
    return (frame.iloc[start:start + rows_per_frame] for start in range(0, len(frame), rows_per_frame))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    ensure_nightly(args, date)
    import mlflow
    import numpy as np

    from recpipe.names import CHAMPION, RANKER_MODEL
    from recpipe.registry import promote
    from recpipe.tracking import tracking_uri

    frame = gate_frame(cfg, date, args.rows)
    per_frame = max(cfg.promote.rows_per_frame, cfg.promote.checked_rows)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    version = promote.version_by_alias(promote.client_for(cfg), CHAMPION).version
    model = mlflow.pyfunc.load_model(f"models:/{RANKER_MODEL}/{version}")
    inner = model.unwrap_python_model()
    errors: dict[str, str] = {}
    ways = {
        "consumer": lambda: model.predict(frame),
        "gate": lambda: promote.predict({"champion": version}, gate_pieces(frame, per_frame), len(frame), errors,
                                        cfg.promote.checked_rows)["champion"],
        "model_only": lambda: inner.predict(None, frame),
    }
    print(f"# D = {date}: {len(frame):,} gate rows, champion version {version}, "
          f"promote.checked_rows {cfg.promote.checked_rows}", flush=True)
    best: dict[str, float] = {}
    scores = {}
    for round_ in range(args.repeat):
        for way, run in ways.items():
            started = time.perf_counter()
            scores[way] = np.asarray(run(), dtype=np.float64).reshape(-1)
            seconds = time.perf_counter() - started
            best[way] = min(best.get(way, seconds), seconds)
            print(f"round {round_ + 1}: {way} {seconds:.2f} s ({len(frame) / seconds:,.0f} rows/s)", flush=True)
    if errors:
        raise SystemExit(f"the gate could not score: {errors}")
    agree = max(float(np.max(np.abs(scores[w] - scores["consumer"]))) for w in ways)
    rate = {way: round(len(frame) / seconds) for way, seconds in best.items()}
    report = {
        "rows": len(frame),
        **{f"{way}_rows_per_s": value for way, value in rate.items()},
        "gate_vs_consumer": round(rate["gate"] / rate["consumer"], 2),
        "check_share": round(1 - rate["consumer"] / rate["model_only"], 3),
        "largest_score_difference": agree,
    }
    print(summary_line(report))


if __name__ == "__main__":
    main()
