"""ALS retrieval quality for several configurations on one day of an existing lake.

    .venv/bin/python benchmarks/als_sweep.py --date 2026-11-14 \\
        --variant "base" \\
        --variant "no-impressions: als.confidence_weights={impression: 0.0, click: 1.0, add_to_cart: 3.0, purchase: 5.0, rating: 1.0}"

Each variant is a name, a colon and `;`-separated `section.key=value` overrides on top of
`--conf` and `--set`. Every variant is trained and evaluated exactly as `recpipe als`
does (same interactions, top-K and metrics, popularity and oracle on the same users),
but nothing is written to the lake or MLflow. Prints one table row per variant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

from recpipe import io  # noqa: E402
from recpipe.als import stage  # noqa: E402
from recpipe.als.interactions import build_interactions, seen_items  # noqa: E402
from recpipe.als.topk import top_k_candidates  # noqa: E402
from recpipe.config import load_config, parse_date  # noqa: E402
from recpipe.spark import get_spark  # noqa: E402

METRICS = ("recall_at_10", "recall_at_50", "ndcg_at_50", "map_at_50", "coverage_at_50")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name.strip(), [o.strip() for o in overrides.split(";") if o.strip()]


def evaluate_variant(spark, cfg, date) -> dict:
    als_cfg = cfg.als
    events = io.read_days(spark, cfg, "events", date - dt.timedelta(days=als_cfg.train_days), date)
    interactions = build_interactions(
        events, als_cfg.confidence_weights, date, als_cfg.train_days, als_cfg.decay_half_life_days
    ).checkpoint()
    started = time.perf_counter()
    model = stage.fit_als(interactions, als_cfg, blocks=max(spark.sparkContext.defaultParallelism, 2))
    seen = seen_items(interactions)
    candidates = top_k_candidates(
        model.userFactors, model.itemFactors, seen if als_cfg.exclude_seen else None, als_cfg.top_k, als_cfg.item_block_size
    ).cache()
    candidates.count()
    fit_s = time.perf_counter() - started
    metrics = stage.evaluate(spark, cfg, date, events, interactions, seen, candidates)
    candidates.unpersist()
    return {"seconds": fit_s, **metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--date", required=True, type=parse_date)
    parser.add_argument("--variant", action="append", default=[], help="NAME: key=value; key=value")
    args = parser.parse_args(argv)

    base = load_config(args.conf, args.overrides)
    spark = get_spark(base, "als-sweep")
    spark.sparkContext.setCheckpointDir(str(Path(base.paths.root) / "_checkpoints" / "als-sweep"))
    rows = []
    for name, extra in map(parse_variant, args.variant or ["base"]):
        cfg = load_config(args.conf, [*args.overrides, *extra])
        result = evaluate_variant(spark, cfg, args.date)
        rows.append((name, result))
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.items())), flush=True)

    print("\n| variant | " + " | ".join(f"als {m}" for m in METRICS) + " | pop recall@50 | pop ndcg@50 | oracle recall@50 | fit+top-K s |")
    print("|---" * (len(METRICS) + 5) + "|")
    for name, r in rows:
        cells = [f"{r[f'als_{m}']:.4f}" for m in METRICS]
        cells += [f"{r['popularity_recall_at_50']:.4f}", f"{r['popularity_ndcg_at_50']:.4f}",
                  f"{r.get('oracle_recall_at_50', float('nan')):.4f}", f"{r['seconds']:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
