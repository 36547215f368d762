"""How well the ranker learns: both networks over several seeds on the same samples,
against the ALS score, popularity, the fitted oracle and the true oracle.

On a data root where the nightly for D has run (it is run first where it has not), this
trains the attention network and the mean-pooling BaseModel `--seeds` times each on D's
samples (the train stage's DDP launch, `ranker.num_processes` ranks, no MLflow run; its
own ranker_input and checkpoints under `tables.ranker_quality`), with seeds
`ranker.seed`, `ranker.seed + 1`, …, and scores every one on the same test rows
(`recpipe.ranker.quality`). It prints each method's test AUC and gAUC as mean ± std over
the seeds, the paired attention − mean difference per seed with its 95 % t-interval, and,
with `--repeat-check`, the AUC difference between two trainings with the first seed.

    .venv/bin/python benchmarks/ranker_quality.py --seeds 3 [--conf conf/local.yaml] [--set k=v] [--date D]

Ends with `summary: attention_auc=… mean_auc=… diff=… diff_low=… diff_high=… vs_oracle=… vs_fitted=… …`.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_args(parser)
    parser.add_argument("--seeds", type=int, default=3, help="trainings of each network (seeds ranker.seed + k)")
    parser.add_argument("--repeat-check", action="store_true", help="train the attention network twice with the "
                        "first seed and report the test AUC difference")
    parser.add_argument("--no-nightly", action="store_true",
                        help="use the root as it is (the samples of D must exist)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    if not args.no_nightly:
        ensure_nightly(args, date)
    from recpipe.ranker import quality
    from recpipe.runner import running

    with running(cfg, "ranker-quality") as runner:
        comparison = quality.compare(runner.spark, quality.scratch_config(cfg, "benchmark"), date, args.seeds,
                                     repeat_check=args.repeat_check)
    figures = quality.figures(comparison)

    print(f"# test rows {comparison['test_rows']}, seeds {comparison['seeds']}, D = {date}")
    print(f"{'method':16} {'AUC':>17} {'gAUC':>17}")
    for name, seeds in comparison["runs"].items():
        cells = [f"{figures[f'{name}_{m}']:.4f} ± {figures[f'{name}_{m}_std']:.4f}" for m in ("auc", "gauc")]
        print(f"{name:16} {cells[0]:>17} {cells[1]:>17}   best epochs {[r['best_epoch'] for r in seeds]}")
    for name, values in comparison["fixed"].items():
        print(f"{name:16} {values['auc']:>17.4f} {values['gauc']:>17.4f}")
    for metric, key in (("auc", "diff"), ("gauc", "gauc_diff")):
        per_seed = [a[metric] - m[metric] for a, m in zip(*comparison["runs"].values())]
        print(f"attention - mean {metric}: {figures[key]:+.4f}, 95% interval [{figures[f'{key}_low']:+.4f}, "
              f"{figures[f'{key}_high']:+.4f}] per seed {np.round(per_seed, 4).tolist()}")
    if "repeat" in comparison:
        first = next(iter(comparison["runs"].values()))[0]
        print(f"same seed twice: test AUC {first['auc']:.6f} and {comparison['repeat']['auc']:.6f}")
    rounded = {key: round(value, 4) if key != "repeat_auc_diff" else value for key, value in figures.items()}
    print(summary_line({"attention_auc": rounded["attention_auc"], "mean_auc": rounded["mean_auc"], **rounded}))


if __name__ == "__main__":
    main()
