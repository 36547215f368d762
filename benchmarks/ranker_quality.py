"""How well the ranker learns: both networks over several seeds on the same samples,
against the ALS score, popularity, the fitted oracle and the true oracle.

On a data root where the nightly for D has run (it is run first where it has not), this
trains the attention network and the mean-pooling BaseModel `--seeds` times each on D's
`ranker_input` (the train stage's DDP launch, `ranker.num_processes` ranks, no MLflow
run), with seeds `ranker.seed`, `ranker.seed + 1`, …, and scores every one on the same
test rows. It prints each method's test AUC and gAUC as mean ± std over the seeds, the
paired attention − mean difference per seed with its 95 % t-interval, and, with
`--repeat-check`, the AUC difference between two trainings with the first seed.

    .venv/bin/python benchmarks/ranker_quality.py --seeds 3 [--conf conf/local.yaml] [--set k=v] [--date D]

Ends with `summary: attention_auc=… mean_auc=… diff=… diff_low=… diff_high=… vs_oracle=… vs_fitted=… …`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

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


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std and the two-sided t-interval of the mean (the mean twice for one value)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0, mean, mean
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def train_once(cfg, date, name: str, seed: int, stats, meta, test) -> dict[str, float]:
    """One DDP training of `name` with `seed`; its test AUC and gAUC (best epoch's weights)."""
    from recpipe.metrics import auc, gauc
    from recpipe.ranker.ddp import launch, load_trained, make_job
    from recpipe.ranker.evaluate import predict
    from recpipe.ranker.settings import model_config

    rc = dataclasses.replace(cfg.ranker, seed=seed, progress=False, resume=False)
    cfg = dataclasses.replace(cfg, ranker=rc)
    job = make_job(cfg, date, name, model_config(rc, stats, meta, name, date), stats, uri="", run_id="")
    result = launch(job, rc)
    p = predict(load_trained(result["checkpoint"]), test, rc.eval_batch_size)
    return {"auc": auc(test["label"], p), "gauc": gauc(test["label"], p, test["user_idx"]),
            "best_epoch": result["best_epoch"], "epochs": result["epochs"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    if not args.no_nightly:
        ensure_nightly(args, date)
    from recpipe.baselines import baseline_scores, popularity_index
    from recpipe.etl.samples import TEST, read_meta
    from recpipe.metrics import auc, gauc
    from recpipe.ranker.evaluate import fitted_oracle, oracle_probabilities
    from recpipe.ranker.inputs import build_ranker_input
    from recpipe.ranker.settings import ATTENTION, MEAN
    from recpipe.runner import running
    from recpipe.splits import EVAL_EXTRA, TRAIN_COLUMNS, read_split, split_location

    with running(cfg, "ranker-quality") as runner:
        meta = read_meta(cfg, date)
        stats = build_ranker_input(runner.spark, cfg, date, meta,
                                   min_files=max(cfg.features.min_files_per_split, cfg.ranker.num_processes))
        test = read_split(split_location(cfg, date, TEST), (*TRAIN_COLUMNS, *EVAL_EXTRA))
        fixed = {name: {"auc": auc(test["label"], s), "gauc": gauc(test["label"], s, test["user_idx"])}
                 for name, s in baseline_scores(test, popularity_index(cfg.ranker, meta, date)).items()}
        oracle = oracle_probabilities(cfg, date, test["event_id"])
        if oracle is not None:
            covered = ~np.isnan(oracle)
            fixed["oracle"] = {"auc": auc(test["label"][covered], oracle[covered]),
                               "gauc": gauc(test["label"][covered], oracle[covered], test["user_idx"][covered])}
            fitted = fitted_oracle(cfg, date, test)
            if fitted is not None:
                fixed["fitted_oracle"] = {"auc": auc(test["label"], fitted),
                                          "gauc": gauc(test["label"], fitted, test["user_idx"])}
        runs = {name: [train_once(cfg, date, name, cfg.ranker.seed + k, stats, meta, test) for k in range(args.seeds)]
                for name in (ATTENTION, MEAN)}
        repeat = (train_once(cfg, date, ATTENTION, cfg.ranker.seed, stats, meta, test)
                  if args.repeat_check else None)

    print(f"# test rows {len(test['label'])}, {args.seeds} seeds from {cfg.ranker.seed}, D = {date}")
    print(f"{'method':16} {'AUC':>17} {'gAUC':>17}")
    figures: dict[str, float] = {}
    for name, seeds in runs.items():
        row = []
        for metric in ("auc", "gauc"):
            mean, std, low, high = interval([r[metric] for r in seeds])
            figures.update({f"{name}_{metric}": round(mean, 4), f"{name}_{metric}_std": round(std, 4),
                            f"{name}_{metric}_low": round(low, 4), f"{name}_{metric}_high": round(high, 4)})
            row.append(f"{mean:.4f} ± {std:.4f}")
        print(f"{name:16} {row[0]:>17} {row[1]:>17}   best epochs {[r['best_epoch'] for r in seeds]}")
    for name, values in fixed.items():
        print(f"{name:16} {values['auc']:>17.4f} {values['gauc']:>17.4f}")
        figures.update({f"{name}_{m}": round(v, 4) for m, v in values.items()})
    for metric in ("auc", "gauc"):
        diffs = np.array([a[metric] - m[metric] for a, m in zip(runs[ATTENTION], runs[MEAN])])
        mean, _, low, high = interval(diffs)
        key = "diff" if metric == "auc" else "gauc_diff"
        figures.update({key: round(mean, 4), f"{key}_low": round(low, 4), f"{key}_high": round(high, 4)})
        print(f"attention - mean {metric}: {mean:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] per seed "
              f"{np.round(diffs, 4).tolist()}")
    attention_auc = figures[f"{ATTENTION}_auc"]
    if "oracle" in fixed:
        figures["vs_oracle"] = round(attention_auc / fixed["oracle"]["auc"], 4)
    if "fitted_oracle" in fixed:
        figures["vs_fitted"] = round(attention_auc / fixed["fitted_oracle"]["auc"], 4)
    if repeat is not None:
        figures["repeat_auc_diff"] = abs(repeat["auc"] - runs[ATTENTION][0]["auc"])
        print(f"same seed twice: test AUC {runs[ATTENTION][0]['auc']:.6f} and {repeat['auc']:.6f}")
    print(summary_line({"attention_auc": attention_auc, "mean_auc": figures[f"{MEAN}_auc"], **figures}))


if __name__ == "__main__":
    main()
