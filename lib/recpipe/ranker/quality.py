"""How well the ranker learns, over several seeds: both networks trained N times on the
same samples, against the ALS score, popularity and (on generated data) the oracles.

One training cannot separate two networks whose AUCs differ by less than run-to-run
noise, so this trains the attention network and the mean-pooling BaseModel with seeds
`ranker.seed`, `ranker.seed + 1`, … and reports each as mean ± std, and the paired
attention − mean difference per seed with its 95 % t-interval.

The trainings write their `ranker_input` and checkpoints under `tables.ranker_quality`
(`scratch_config`), so the pipeline's own ranker_input, checkpoints and markers stay as
they are. Used by `benchmarks/ranker_quality.py` and by `make report`, which also
compares the networks on held-out users (`holdout_config`, `write_holdout_samples`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config

log = logging.getLogger("recpipe.ranker.quality")

# The tables a comparison writes: its own copies, beside the pipeline's.
SCRATCH_TABLES = ("ranker_input", "ranker_input_train", "ranker_input_valid", "ranker_input_test", "checkpoints")
HOLDOUT = "user_holdout"


def scratch_config(cfg: Config, label: str, tables: tuple[str, ...] = SCRATCH_TABLES) -> Config:
    """`cfg` with `tables` moved under `<tables.ranker_quality>/<label>/` of the root."""
    prefix = f"{cfg.tables.ranker_quality.rstrip('/')}/{label}"
    moved = {name: f"{prefix}/{getattr(cfg.tables, name)}" for name in tables}
    return dataclasses.replace(cfg, tables=dataclasses.replace(cfg.tables, **moved))


def holdout_config(cfg: Config) -> Config:
    """The DIN paper's protocol: `history.holdout_share` of the users held out, every
    rating of theirs evaluating (`history.holdout_valid_share` of them valid), in the
    comparison's own samples table."""
    from recpipe.errors import ConfigError

    hc = cfg.history
    if not 0.0 < hc.holdout_share < 1.0 or not 0.0 <= hc.holdout_valid_share <= 1.0:
        raise ConfigError(f"history.holdout_share ({hc.holdout_share}) must lie strictly between 0 and 1 and "
                          f"history.holdout_valid_share ({hc.holdout_valid_share}) between 0 and 1")
    features = dataclasses.replace(cfg.features, eval_split=HOLDOUT, holdout_share=hc.holdout_share,
                                   valid_share=hc.holdout_valid_share)
    return scratch_config(dataclasses.replace(cfg, features=features), HOLDOUT, (*SCRATCH_TABLES, "samples"))


def write_holdout_samples(spark: SparkSession, cfg: Config, target: Config, date: dt.date) -> dict[str, int]:
    """D's samples of `cfg` split again as `target.features` says, written to `target`'s
    samples table with their `_meta.json`; rows per split.

    Only the split changes: every sample's features are as of its own time whatever the
    split, so one features run serves both protocols.
    """
    from recpipe import io, tables
    from recpipe.errors import ConfigError
    from recpipe.etl import samples as S
    from recpipe.etl.sequences import day_start_ms
    from recpipe.schema import DT

    meta = S.read_meta(cfg, date)
    if float(meta.get("negative_sampling_rate", 1.0)) < 1.0:
        raise ConfigError(f"the samples of {date} keep a share of the train negatives only; a new split needs all "
                         "of them (features.negative_sampling_rate: 1.0)")
    fc = target.features
    cutoff_ms = day_start_ms(date)
    day = io.read_day(spark, cfg, "samples", date).drop(S.SPLIT).withColumn(DT, F.lit(date))
    resplit = S.assign_splits(day, cutoff_ms, fc.eval_split, fc.valid_share, fc.sampling_seed,
                              holdout_share=fc.holdout_share)
    with tables.committing(target, f"samples of {date} split again"):  # the splits and their meta: one version
        rows, positives, files = S.write_counted_splits(resplit, target, date)
        S.write_meta(target, date, {**meta, "eval_split": fc.eval_split, "valid_share": fc.valid_share,
                                    "holdout_share": fc.holdout_share, "rows": rows, "positives": positives,
                                    "files": files})
    log.info("samples of %s split again (%s): %s", date, fc.eval_split, rows)
    return rows


def interval(values, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std and the two-sided t-interval of the mean (the mean twice for one value)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0, mean, mean
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def train_all(cfg: Config, date: dt.date, plan: Sequence[tuple[str, int]], stats, meta: Mapping,
              test: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """Each (network, seed) of `plan` trained by DDP, all in one launch, each in a checkpoint
    folder of its own (no MLflow run); their test AUC and gAUC with the best epoch's weights."""
    from recpipe.metrics import auc, gauc
    from recpipe.ranker.ddp import checkpoint_dir, launch, load_trained, make_job
    from recpipe.ranker.evaluate import predict
    from recpipe.ranker.settings import model_config

    rc = dataclasses.replace(cfg.ranker, progress=False, resume=False)
    jobs = []
    for k, (name, seed) in enumerate(plan):
        seeded = dataclasses.replace(cfg, ranker=dataclasses.replace(rc, seed=seed))
        folder = checkpoint_dir(cfg, date, f"{k}-{name}-seed-{seed}")
        jobs.append(make_job(seeded, date, name, model_config(seeded.ranker, stats, meta, name, date), stats,
                             uri="", run_id="", folder=folder))
    out = []
    for result in launch(jobs, rc):
        p = predict(load_trained(result["checkpoint"]), test, rc.eval_batch_size)
        out.append({"auc": auc(test["label"], p), "gauc": gauc(test["label"], p, test["user_idx"]),
                    "best_epoch": result["best_epoch"], "epochs": result["epochs"]})
    return out


def fixed_scores(cfg: Config, date: dt.date, meta: Mapping, test: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """AUC and gAUC of the methods that do not depend on a seed: the ALS score and
    popularity, and on generated data the true and the fitted oracle."""
    from recpipe.baselines import baseline_scores, popularity_index
    from recpipe.metrics import auc, gauc
    from recpipe.ranker.evaluate import fitted_oracle, oracle_probabilities

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
    return fixed


def compare(spark: SparkSession, cfg: Config, date: dt.date, seeds: int, repeat_check: bool = False) -> dict[str, Any]:
    """Train both networks `seeds` times on D's samples of `cfg` (in the scratch tables of
    `scratch_config`) and score them and the fixed methods on the same test rows.

    Returns:
        `runs` (network → one result per seed), `fixed` (method → auc, gauc), `seeds`
        (the seeds used), `test_rows`, `test_users`, and `repeat` (a second training
        with the first seed) when `repeat_check`.
    """
    from recpipe.etl.samples import TEST, read_meta
    from recpipe.ranker.inputs import build_ranker_input
    from recpipe.ranker.settings import ATTENTION, MEAN
    from recpipe.splits import EVAL_EXTRA, TRAIN_COLUMNS, read_split, split_location

    meta = read_meta(cfg, date)
    stats = build_ranker_input(spark, cfg, date, meta,
                               min_files=max(cfg.features.min_files_per_split, cfg.ranker.num_processes))
    test = read_split(split_location(cfg, date, TEST), (*TRAIN_COLUMNS, *EVAL_EXTRA))
    seed_list = [cfg.ranker.seed + k for k in range(seeds)]
    out = {"seeds": seed_list, "test_rows": len(test["label"]), "test_users": len(np.unique(test["user_idx"])),
           "fixed": fixed_scores(cfg, date, meta, test), "eval_split": meta["eval_split"]}
    plan = [(name, seed) for name in (ATTENTION, MEAN) for seed in seed_list]
    if repeat_check:
        plan.append((ATTENTION, seed_list[0]))
    trained = train_all(cfg, date, plan, stats, meta, test)
    out["runs"] = {name: [trained[plan.index((name, seed))] for seed in seed_list] for name in (ATTENTION, MEAN)}
    if repeat_check:
        out["repeat"] = trained[-1]  # the same network and seed as the first, trained again
    return out


def figures(comparison: Mapping[str, Any]) -> dict[str, float]:
    """The comparison as flat figures: `<network>_<auc|gauc>` with `_std`, `_low`,
    `_high`; `<method>_<metric>` of the fixed methods; the paired difference `diff`
    (AUC) and `gauc_diff` with `_low`/`_high`; `vs_oracle`, `vs_fitted` and
    `repeat_auc_diff` where they apply."""
    from recpipe.ranker.settings import ATTENTION, MEAN

    runs, fixed = comparison["runs"], comparison["fixed"]
    out: dict[str, float] = {}
    for name, results in runs.items():
        for metric in ("auc", "gauc"):
            mean, std, low, high = interval([r[metric] for r in results])
            out.update({f"{name}_{metric}": mean, f"{name}_{metric}_std": std,
                        f"{name}_{metric}_low": low, f"{name}_{metric}_high": high})
    for name, values in fixed.items():
        out.update({f"{name}_{metric}": value for metric, value in values.items()})
    for metric, key in (("auc", "diff"), ("gauc", "gauc_diff")):
        mean, _, low, high = interval([a[metric] - m[metric] for a, m in zip(runs[ATTENTION], runs[MEAN])])
        out.update({key: mean, f"{key}_low": low, f"{key}_high": high})
    if "oracle" in fixed:
        out["vs_oracle"] = out[f"{ATTENTION}_auc"] / fixed["oracle"]["auc"]
    if "fitted_oracle" in fixed:
        out["vs_fitted"] = out[f"{ATTENTION}_auc"] / fixed["fitted_oracle"]["auc"]
    if "repeat" in comparison:
        out["repeat_auc_diff"] = abs(comparison["repeat"]["auc"] - runs[ATTENTION][0]["auc"])
    return out


def lead_in_words(values: Mapping[str, float], metric: str = "gauc") -> str:
    """Whether attention's lead over mean pooling is inside the noise, from the paired
    difference's interval: one plain sentence."""
    key, label = ("diff", "AUC") if metric == "auc" else ("gauc_diff", "gAUC")
    mean, low, high = values[key], values[f"{key}_low"], values[f"{key}_high"]
    span = f"Attention − mean pooling on {label}: {mean:+.4f}, 95 % interval [{low:+.4f}, {high:+.4f}]"
    if low > 0:
        return f"{span}: attention leads, outside the noise."
    if high < 0:
        return f"{span}: mean pooling leads, outside the noise."
    return f"{span}: inside the noise (the interval holds 0), so neither network leads."
