"""`recpipe train --date D`: the attention ranker, end to end.

1. Spark: day D's samples + leak-free ALS scores → `ranker_input/dt=D` (Petastorm-ready),
   vocabulary sizes and normalisation statistics from its train split (`inputs`).
2. DDP: TorchDistributor runs `trainer.train` on `ranker.num_processes` ranks for the
   attention model and, with the same budget, the mean-pooling BaseModel; rank 0 logs
   per-epoch metrics into this stage's MLflow run (URI and run id passed explicitly).
3. Driver: both networks, the ALS score, popularity and (generated data) the oracle on
   the same rows of the test split; ROC, training curves and an attention heat-map.
4. MLflow: the attention model as a self-contained pyfunc, registered as
   `attention-ranker` with the alias `challenger`.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe import io, paths
from recpipe.config import Config, RankerConfig
from recpipe.errors import ConfigError, DataError, RecpipeError
from recpipe.etl.samples import TEST, TRAIN, VALID, read_meta
from recpipe.ranker import checkpoints
from recpipe.ranker.data import EVAL_EXTRA, TRAIN_COLUMNS, read_split, row_groups
from recpipe.ranker.evaluate import baseline_scores, compare, oracle_probabilities, predict
from recpipe.ranker.inputs import InputStats, build_ranker_input, split_location
from recpipe.ranker.layers.mlp import ACTIVATIONS
from recpipe.ranker.layers.attention import WEIGHTINGS
from recpipe.ranker.model import RankerModel, RankerModelConfig, build_model
from recpipe.ranker.trainer import TrainJob, train
from recpipe.schema import CAT_IDX, ITEM_DENSE, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX

log = logging.getLogger("recpipe.ranker")

EXPERIMENT = "recpipe-ranker"
REGISTERED_MODEL = "attention-ranker"
ATTENTION, MEAN = "attention", "mean"


class TrainingError(RecpipeError):
    """A DDP training run failed (a rank died, the barrier stage was lost)."""


def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Build the inputs, train both models with DDP, evaluate on the test split, register.

    Returns:
        Rows per split, steps, the test metrics and the registered version.
    """
    rc = cfg.ranker
    check_config(rc)
    meta = read_meta(cfg, date)
    popularity = popularity_index(rc, meta, date)
    stats = build_ranker_input(spark, cfg, date, meta, min_files=max(cfg.features.min_files_per_split, rc.num_processes))
    train_groups = row_groups(split_location(cfg, date, TRAIN))
    if train_groups < rc.num_processes:
        raise DataError(f"train: {train_groups} row groups in the train split for {rc.num_processes} ranks; "
                        "Petastorm shards by row group, so every rank needs at least one")
    log.info("ranker_input for %s: rows %s, vocab items %d, categories %d", date, stats.rows, stats.item_vocab,
             stats.cat_vocab)

    import mlflow

    from recpipe.tracking import start_run, tracking_uri

    uri = tracking_uri(cfg)
    with start_run(cfg, EXPERIMENT, run_name=f"ranker-{date}", tags=run_tags(cfg, date)) as active:
        log_run_inputs(spark, cfg, date, rc, stats, meta)
        results = {}
        for name in [ATTENTION, MEAN] if rc.compare_base_model else [ATTENTION]:
            config = model_config(rc, stats, meta, name, date)
            mlflow.log_params({f"{name}.use_als_score": config.use_als_score, f"{name}.pooling": config.pooling})
            results[name] = launch(make_job(cfg, date, name, config, stats, uri, active.info.run_id), rc)
            log.info("%s: %d steps over %d epochs on %d ranks", name, results[name]["steps"],
                     results[name]["epochs"], results[name]["world_size"])
        models = {name: load_trained(result["checkpoint"]) for name, result in results.items()}
        test = read_split(split_location(cfg, date, TEST), (*TRAIN_COLUMNS, *EVAL_EXTRA)) if stats.rows[TEST] else None
        metrics = {f"{name}_steps": float(r["steps"]) for name, r in results.items()}
        vocabulary = read_vocabulary(spark, cfg, date)
        if test is not None:
            metrics.update(evaluate_and_plot(cfg, date, rc, popularity, models, results, test, vocabulary))
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        registered = publish(spark, cfg, date, rc, results[ATTENTION], vocabulary, test)
    return {"rows": stats.rows, "run_id": active.info.run_id, **registered,
            **{k: round(v, 4) for k, v in metrics.items() if k.endswith(("_auc", "_gauc", "_steps"))}}


def check_config(rc: RankerConfig) -> None:
    """Raise ConfigError naming the `ranker.*` key whose value cannot work."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"ranker.{key}: {why}")

    if rc.activation not in ACTIVATIONS:
        raise bad("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {rc.activation!r}")
    if rc.attention_weighting not in WEIGHTINGS:
        raise bad("attention_weighting", f"must be one of {', '.join(WEIGHTINGS)}, got {rc.attention_weighting!r}")
    for key in ("item_embedding_dim", "cat_embedding_dim", "batch_size", "epochs", "num_processes",
                "eval_batch_size", "reader_workers"):
        if getattr(rc, key) < 1:
            raise bad(key, "must be at least 1")
    if rc.batch_size % rc.num_processes:
        raise bad("batch_size", f"{rc.batch_size} does not split evenly across num_processes={rc.num_processes}")
    if not 0.0 <= rc.dropout < 1.0:
        raise bad("dropout", "must be in [0, 1)")


def model_config(rc: RankerConfig, stats: InputStats, meta: Mapping, name: str, date: dt.date) -> RankerModelConfig:
    """The network for `name` (attention or mean pooling) on the data of day D."""
    return RankerModelConfig(
        item_vocab=stats.item_vocab,
        cat_vocab=stats.cat_vocab,
        history_length=int(meta["history_length"]),
        user_dense_dim=len(meta["user_dense_features"]),
        item_dense_dim=len(meta["item_dense_features"]),
        pooling=name,
        attention_weighting=rc.attention_weighting,
        item_embedding_dim=rc.item_embedding_dim,
        cat_embedding_dim=rc.cat_embedding_dim,
        attention_hidden=tuple(rc.attention_hidden),
        head_hidden=tuple(rc.head_hidden),
        activation=rc.activation,
        dropout=rc.dropout,
        user_dense_mean=stats.user_dense_mean,
        user_dense_std=stats.user_dense_std,
        item_dense_mean=stats.item_dense_mean,
        item_dense_std=stats.item_dense_std,
        als_score_mean=stats.als_score_mean,
        als_score_std=stats.als_score_std,
        use_als_score=rc.use_als_score and als_scores_in_training(stats, date),
        embedding_init_std=rc.embedding_init_std,
        extra={"date": date.isoformat(), "user_dense_features": list(meta["user_dense_features"]),
               "item_dense_features": list(meta["item_dense_features"])},
    )


def als_scores_in_training(stats: InputStats, date: dt.date) -> bool:
    """Whether any train day had an ALS run on or before it.

    Without one every train row has als_score 0.0 while the test rows (scored by D's run)
    do not: the feature would be learnt as a constant and then fed something else, so it
    is left out of the network instead (run the als stage for the train days to use it).
    """
    covered = [day for day, run in stats.als_days.items() if day < date.isoformat() and run]
    if not covered:
        log.warning("no ALS run on or before any train day of %s: the network does not use als_score", date)
    return bool(covered)


def checkpoint_dir(cfg: Config, date: dt.date, name: str) -> str:
    return paths.join_uri(cfg.table_path("checkpoints"), "ranker", f"dt={date.isoformat()}", name)


def make_job(cfg: Config, date: dt.date, name: str, config: RankerModelConfig, stats: InputStats,
             uri: str, run_id: str) -> TrainJob:
    rc = cfg.ranker
    folder = checkpoint_dir(cfg, date, name)
    if not rc.resume:
        paths.delete_dir(folder)  # a fresh run never picks up another run's checkpoints
    return TrainJob(
        name=name,
        model_config=config.to_dict(),
        train_location=split_location(cfg, date, TRAIN),
        valid_location=split_location(cfg, date, VALID) if stats.rows[VALID] else "",
        train_rows=stats.rows[TRAIN],
        checkpoint_dir=folder,
        global_batch_size=rc.batch_size,
        epochs=rc.epochs,
        learning_rate=rc.learning_rate,
        weight_decay=rc.weight_decay,
        seed=rc.seed,
        shuffle_queue=rc.shuffle_queue,
        reader_workers=rc.reader_workers,
        eval_batch_size=rc.eval_batch_size,
        use_gpu=rc.use_gpu,
        resume=rc.resume,
        progress=rc.progress,
        tracking_uri=uri,
        run_id=run_id,
        resolved_config=cfg.to_dict(),
    )


def launch(job: TrainJob, rc: RankerConfig) -> dict[str, Any]:
    """Run `train(job)` on `num_processes` DDP ranks through TorchDistributor: torchrun on
    the driver in local mode, barrier tasks on the executors otherwise."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=rc.num_processes, local_mode=rc.local_mode, use_gpu=rc.use_gpu)
    try:
        return distributor.run(train, job)
    except Exception as err:  # a rank died, or the barrier stage failed: say what a rerun can do
        last = checkpoints.latest(job.checkpoint_dir)
        where = "the driver" if rc.local_mode else "the executors"
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TrainingError(
            f"DDP training of {job.name} on {rc.num_processes} ranks ({where}) failed: {cause}. "
            + (f"Last checkpoint: {last}; rerun with --resume (ranker.resume=true) to continue from it."
               if last else "No checkpoint was written; rerun from the start.")) from err


def load_trained(location: str) -> RankerModel:
    """The network saved in a checkpoint, on the CPU, in eval mode."""
    state = checkpoints.load(location)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model_state"])
    return model.eval()


# --- evaluation ----------------------------------------------------------------------

def popularity_index(rc: RankerConfig, meta: Mapping, date: dt.date) -> int:
    """Position of `ranker.popularity_feature` in `item_dense` (names from _meta.json)."""
    features = list(meta["item_dense_features"])
    if rc.popularity_feature not in features:
        raise ConfigError(f"ranker.popularity_feature: {rc.popularity_feature!r} is not an item dense feature "
                          f"of the samples of {date} (they have {', '.join(features)})")
    return features.index(rc.popularity_feature)


def evaluate_and_plot(cfg: Config, date: dt.date, rc: RankerConfig, popularity: int,
                      models: Mapping[str, RankerModel], results: Mapping[str, dict], test: Mapping[str, np.ndarray],
                      vocabulary: pd.DataFrame) -> dict[str, float]:
    """Test metrics of every method on the same rows, and the figures, into the active run."""
    import mlflow

    from recpipe.ranker.report import attention_heatmap_figure, roc_figure, training_curves_figure

    probabilities = {name: predict(model, test, rc.eval_batch_size) for name, model in models.items()}
    scores = baseline_scores(test, popularity)
    oracle = oracle_probabilities(cfg, date, test["event_id"])
    metrics = compare(test["label"], test["user_idx"], probabilities, scores, oracle)

    curves = {**probabilities, **scores}
    if oracle is not None and not np.isnan(oracle).any():
        curves["oracle"] = oracle
    mlflow.log_figure(roc_figure(test["label"], curves), "figures/roc.png")
    mlflow.log_figure(training_curves_figure({n: r["history"] for n, r in results.items()}), "figures/training_curves.png")
    names = dict(zip(vocabulary[ITEM_IDX].astype(int), vocabulary[ITEM_ID].astype(str)))
    mlflow.log_figure(attention_heatmap_figure(models[ATTENTION], test, names, users=rc.heatmap_users, seed=rc.seed),
                      "figures/attention_heatmap.png")
    return metrics


# --- MLflow: inputs, tags, model -----------------------------------------------------

def run_tags(cfg: Config, date: dt.date) -> dict[str, str]:
    return {"date": date.isoformat(), "stage": "train", "git_commit": git_commit()}


def git_commit() -> str:
    """The commit of the code that trains (the checkout this package lives in), or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_run_inputs(spark: SparkSession, cfg: Config, date: dt.date, rc: RankerConfig, stats: InputStats,
                   meta: Mapping) -> None:
    """Parameters, the resolved config, the training dataset (with its digest as a tag)."""
    import mlflow

    mlflow.log_params({f"ranker.{k}": v for k, v in cfg.to_dict()["ranker"].items()})
    mlflow.log_params({
        "rows_train": stats.rows[TRAIN], "rows_valid": stats.rows[VALID], "rows_test": stats.rows[TEST],
        "item_vocab": stats.item_vocab, "cat_vocab": stats.cat_vocab, "history_length": meta["history_length"],
    })
    mlflow.log_dict(cfg.to_dict(), "config.yaml")
    mlflow.log_dict(dict(meta), "samples_meta.json")
    mlflow.log_dict({"als_run_per_sample_day": stats.als_days}, "als_days.json")
    location = split_location(cfg, date, TRAIN)
    dataset = mlflow.data.from_spark(io.read_path(spark, location), path=location, name=f"ranker_input-{date}-train")
    mlflow.log_input(dataset, context="training")
    mlflow.set_tag("data_digest", dataset.digest)


def read_vocabulary(spark: SparkSession, cfg: Config, date: dt.date) -> pd.DataFrame:
    """Every item known on D: `item_id`, `item_idx`, `cat_idx` (0 = unknown) and the item
    features as of D (`item_dense`, null when the item has none)."""
    day = io.latest_day(cfg, "dim_items", date)
    if day is None:
        raise DataError(f"train: no item dictionary on or before {date} at {cfg.table_path('dim_items')}")
    items = io.read_day(spark, cfg, "dim_items", day).select(ITEM_ID, F.col(ITEM_IDX).cast("int"))
    catalogue_day = io.latest_day(cfg, "catalogue", date)
    if catalogue_day is not None:
        categories = io.read_day(spark, cfg, "catalogue", catalogue_day).select(ITEM_IDX, CAT_IDX)
        items = items.join(categories, ITEM_IDX, "left")
    else:
        items = items.withColumn(CAT_IDX, F.lit(None).cast("int"))
    if io.table_exists(cfg, "item_features", date):
        items = items.join(io.read_day(spark, cfg, "item_features", date).select(ITEM_IDX, ITEM_DENSE), ITEM_IDX, "left")
    else:
        items = items.withColumn(ITEM_DENSE, F.lit(None).cast("array<float>"))
    return items.withColumn(CAT_IDX, F.coalesce(F.col(CAT_IDX), F.lit(0))).orderBy(ITEM_IDX).toPandas()


def publish(spark: SparkSession, cfg: Config, date: dt.date, rc: RankerConfig, result: Mapping,
            vocabulary: pd.DataFrame, test: Mapping[str, np.ndarray] | None) -> dict[str, str]:
    """Log the attention model as a pyfunc into the active run; register it as a challenger."""
    from recpipe.ranker.publish import log_ranker_model
    from recpipe.ranker.scoring import save_vocabulary, save_weights

    state = checkpoints.load(result["checkpoint"])
    dense_dim = int(state["model_config"]["item_dense_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        weights, vocab = f"{tmp}/weights.pt", f"{tmp}/vocabulary.npz"
        save_weights(weights, state["model_config"], state["model_state"])
        save_vocabulary(vocab, vocabulary[ITEM_ID].to_numpy(), vocabulary[ITEM_IDX].to_numpy(),
                        vocabulary[CAT_IDX].to_numpy(), _dense_matrix(vocabulary[ITEM_DENSE], dense_dim))
        example = input_example(spark, cfg, date, vocabulary, test)
        return log_ranker_model(weights, vocab, example, REGISTERED_MODEL if rc.register_model else None)


def _dense_matrix(column: pd.Series, dim: int) -> np.ndarray:
    out = np.full((len(column), dim), np.nan, np.float32)
    for i, values in enumerate(column):
        if values is not None and len(values) == dim:
            out[i] = values
    return out


def input_example(spark: SparkSession, cfg: Config, date: dt.date, vocabulary: pd.DataFrame,
                  test: Mapping[str, np.ndarray] | None, rows: int = 3) -> pd.DataFrame:
    """A few test rows as a consumer would send them: string ids, lists, dense features."""
    from recpipe.ranker.consumer import consumer_frame, id_lookup

    names = id_lookup(vocabulary[ITEM_IDX].to_numpy(), vocabulary[ITEM_ID].astype(str).to_numpy())
    if test is None or len(test["label"]) == 0:
        some = [n for n in names if n != "unknown"][:2]
        return pd.DataFrame({ITEM_ID: some[:1], "history": [some[1:]]})
    picked = np.argsort(-test["hist_len"], kind="stable")[:rows]
    users = _user_ids(spark, cfg, date, [int(u) for u in test["user_idx"][picked]])
    return consumer_frame(test, names, picked, users)


def _user_ids(spark: SparkSession, cfg: Config, date: dt.date, indexes: list[int]) -> dict[int, str]:
    day = io.latest_day(cfg, "dim_users", date)
    if day is None:
        return {}
    rows = io.read_day(spark, cfg, "dim_users", day).where(F.col(USER_IDX).isin(indexes)).collect()
    return {int(r[USER_IDX]): r[USER_ID] for r in rows}
