"""Evaluation on the held-out test split: every method scores the same rows.

Methods: the trained networks (click probabilities), the ALS score and the popularity
feature (scores only: ranking metrics), and on generated data the oracle, the true
click probability the generator planted, and the fitted oracle, the generator's click
model fitted on the train rows (`fitted_oracle`), with each method's AUC as a share of
both.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from recpipe import paths
from recpipe.baselines import baseline_scores
from recpipe.config import Config, RankerConfig
from recpipe.metrics import auc, evaluate_scores
from recpipe.ranker.data import tensor_batches
from recpipe.ranker.settings import ATTENTION
from recpipe.schema import ITEM_ID, ITEM_IDX
from recpipe.serving.model import RankerModel, model_inputs
from recpipe.timing import Parts

log = logging.getLogger("recpipe.ranker")

ORACLE = "oracle"
FITTED_ORACLE = "fitted_oracle"


@torch.no_grad()
def predict(model: RankerModel, arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Click probabilities of a network for in-memory rows, in row order."""
    model.eval()
    out = [torch.sigmoid(model(*model_inputs(b)).float()).numpy() for b in tensor_batches(arrays, batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


def oracle_probabilities(cfg: Config, date: dt.date, event_ids: np.ndarray) -> np.ndarray | None:
    """The planted p_click of each event id (NaN where unknown); None on real data."""
    import pyarrow.dataset as ds

    location = cfg.table_path("truth_impressions", date)
    if not paths.exists(location):
        return None
    fs, root = paths.filesystem_for(location)
    truth = ds.dataset(root, filesystem=fs, format="parquet").to_table(columns=["event_id", "p_click"]).to_pandas()
    p_click = truth.drop_duplicates("event_id").set_index("event_id")["p_click"]
    return p_click.reindex(event_ids.astype(str)).to_numpy(dtype=np.float64)


def compare(labels: np.ndarray, users: np.ndarray, probabilities: Mapping[str, np.ndarray],
            scores: Mapping[str, np.ndarray], oracle: np.ndarray | None,
            fitted: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of every method on the same rows, as `test_<method>_<metric>`.

    Args:
        labels / users: per row.
        probabilities: methods whose scores are click probabilities (logloss, calibration apply).
        scores: methods with scores only (ranking metrics).
        oracle: the true p_click per row (NaN = unknown) or None.
        fitted: the fitted oracle's probability per row, or None.

    With an oracle, `test_<method>_auc_vs_oracle` is the method's AUC over the oracle's,
    both on the rows the truth covers; with a fitted oracle, `test_<method>_auc_vs_fitted_oracle`
    is the same over the fitted oracle's AUC on every row.
    """
    out: dict[str, float] = {"test_rows": float(len(labels)), "test_users": float(len(np.unique(users)))}
    methods = {**{m: (s, True) for m, s in probabilities.items()}, **{m: (s, False) for m, s in scores.items()}}
    for method, (values, is_probability) in methods.items():
        for metric, value in evaluate_scores(labels, values, users, probabilities=is_probability).items():
            out[f"test_{method}_{metric}"] = value
    if fitted is not None and len(labels):
        for metric, value in evaluate_scores(labels, fitted, users, probabilities=True).items():
            out[f"test_{FITTED_ORACLE}_{metric}"] = value
        for method, (values, _) in methods.items():
            out[f"test_{method}_auc_vs_{FITTED_ORACLE}"] = auc(labels, values) / out[f"test_{FITTED_ORACLE}_auc"]
    if oracle is None:
        return out
    covered = ~np.isnan(oracle)
    out["test_oracle_coverage"] = float(covered.mean()) if len(covered) else 0.0
    if not covered.any():
        return out
    y = labels[covered]
    for metric, value in evaluate_scores(y, oracle[covered], users[covered], probabilities=True).items():
        out[f"test_{ORACLE}_{metric}"] = value
    ceiling = auc(y, oracle[covered])
    for method, (values, _) in methods.items():
        out[f"test_{method}_auc_vs_oracle"] = auc(y, values[covered]) / ceiling
    return out


def fitted_oracle(cfg: Config, date: dt.date, test: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The fitted oracle's test probabilities, fitted on D's train rows with early stopping
    on its valid rows; None when `fitted_oracle.enabled` is off or there are no valid rows
    to stop on."""
    from recpipe.ranker.fitted_oracle import fitted_oracle_scores
    from recpipe.splits import split_location

    if not cfg.fitted_oracle.enabled:
        return None
    valid_location = split_location(cfg, date, "valid")
    if not paths.exists(valid_location):
        return None
    # From the split folders, a row group at a time: the driver holds the train rows once.
    return fitted_oracle_scores(split_location(cfg, date, "train"), valid_location, test, cfg.fitted_oracle)


def evaluate_and_plot(cfg: Config, date: dt.date, rc: RankerConfig, popularity: int,
                      models: Mapping[str, RankerModel], results: Mapping[str, dict], test: Mapping[str, np.ndarray],
                      vocabulary: pd.DataFrame, parts: Parts) -> dict[str, float]:
    """Test metrics of every method on the same rows, and the figures, into the active run;
    the fitted oracle's seconds into `parts`."""
    import mlflow

    from recpipe.ranker.report import attention_heatmap_figure, roc_figure, training_curves_figure

    probabilities = {name: predict(model, test, rc.eval_batch_size) for name, model in models.items()}
    scores = baseline_scores(test, popularity)
    oracle = oracle_probabilities(cfg, date, test["event_id"])
    fitted = None
    if oracle is not None:  # only generated data has an oracle to compare the fitted one with
        with parts("fitted_oracle"):
            fitted = fitted_oracle(cfg, date, test)
    metrics = compare(test["label"], test["user_idx"], probabilities, scores, oracle, fitted)

    curves = {**probabilities, **scores}
    if oracle is not None and not np.isnan(oracle).any():
        curves["oracle"] = oracle
    mlflow.log_figure(roc_figure(test["label"], curves), "figures/roc.png")
    histories = {name: result["history"] for name, result in results.items()}
    mlflow.log_figure(training_curves_figure(histories), "figures/training_curves.png")
    names = dict(zip(vocabulary[ITEM_IDX].astype(int), vocabulary[ITEM_ID].astype(str)))
    mlflow.log_figure(attention_heatmap_figure(models[ATTENTION], test, names, users=rc.heatmap_users, seed=rc.seed),
                      "figures/attention_heatmap.png")
    return metrics
