"""`recpipe als --date D`: factorise the window before D, write top-K candidates, evaluate on D."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import io, paths, tables
from recpipe.als.evaluate import popularity_lists, ranked_lists, relevant_items, retrieval_metrics
from recpipe.als.interactions import RATING, build_interactions, seen_items
from recpipe.als.topk import top_k_candidates
from recpipe.config import AlsConfig, Config
from recpipe.errors import ConfigError
from recpipe.names import ALS_EXPERIMENT, ALS_MODEL
from recpipe.schema import ALS_SCORE, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.splits import parquet_rows
from recpipe.spark import blas_implementation, list_partitions
from recpipe.stage import Partition, Stage, days
from recpipe.timing import Parts

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel

log = logging.getLogger("recpipe.als")

EVAL_USERS = ("all", "warm")


def event_days(cfg: Config, date: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last `dt=` of events read: the train days before D, then the
    evaluation days from D on (their items are the held-out truth)."""
    return date - dt.timedelta(days=cfg.als.train_days), date + dt.timedelta(days=cfg.evaluation.days - 1)


@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Train ALS on the `als.train_days` before `date`, publish factors and candidates, evaluate on `date`."""
    als_cfg = cfg.als
    if als_cfg.eval_users not in EVAL_USERS:
        raise ConfigError(f"als.eval_users must be one of {', '.join(EVAL_USERS)}, got {als_cfg.eval_users!r}")
    log.info("Spark ML BLAS: %s", blas_implementation(spark))
    spark.sparkContext.setCheckpointDir(paths.join_uri(cfg.paths.root, "_checkpoints", "als"))

    parts = Parts()
    events = io.read_days(spark, cfg, "events", *event_days(cfg, date))
    with parts("read_interactions"):
        interactions = build_interactions(
            events, als_cfg.confidence_weights, date, als_cfg.train_days, als_cfg.decay_half_life_days
        ).checkpoint()  # materialised and deterministic: ALS may recompute lost blocks from it
    with parts("fit"):
        model = fit_als(interactions, als_cfg, blocks=max(spark.sparkContext.defaultParallelism, 2))

    seen = seen_items(interactions)
    candidates = top_k_candidates(
        model.userFactors,
        model.itemFactors,
        seen if als_cfg.exclude_seen else None,
        als_cfg.top_k,
        als_cfg.item_block_size,
        als_cfg.user_block_size,
    )
    with parts("write_factors_and_top_k"):  # the top-K runs as its candidates are written
        write_outputs(cfg, date, model, candidates)
    location = io.location(cfg, "als_candidates", date)
    candidates = io.read_path(spark, location)

    with parts("metrics"):
        candidate_rows = parquet_rows(location)
        metrics = evaluate(spark, cfg, date, events, interactions, seen, candidates, candidate_rows)
        summary = {
            "interactions": interactions.count(),
            "users_with_factors": model.userFactors.count(),
            "candidate_rows": candidate_rows,
            **metrics,
        }
    with parts("mlflow"):
        run_id = log_to_mlflow(cfg, date, als_cfg, model, interactions, {**summary, **parts.seconds})
    log_part_seconds(cfg, run_id, parts)
    log.info("als %s: seconds per part: %s", date, parts.describe())
    return {**summary, **parts.seconds, "run_id": run_id}


def log_part_seconds(cfg: Config, run_id: str, parts: Parts) -> None:
    """The MLflow part's own seconds, added to the run after it ended."""
    import mlflow

    from recpipe.tracking import tracking_uri

    mlflow.MlflowClient(tracking_uri(cfg)).log_metric(run_id, "mlflow_s", parts.seconds["mlflow_s"])


def fit_als(interactions: DataFrame, als_cfg: AlsConfig, blocks: int) -> ALSModel:
    """Implicit ALS with block counts from the cluster's parallelism."""
    from pyspark.ml.recommendation import ALS  # Spark ML loads when the stage runs, not with the CLI
    estimator = ALS(
        implicitPrefs=True,
        rank=als_cfg.rank,
        regParam=als_cfg.reg_param,
        alpha=als_cfg.alpha,
        maxIter=als_cfg.max_iter,
        seed=als_cfg.seed,
        checkpointInterval=als_cfg.checkpoint_interval,
        coldStartStrategy=als_cfg.cold_start_strategy,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        userCol=USER_IDX,
        itemCol=ITEM_IDX,
        ratingCol=RATING,
    )
    return estimator.fit(interactions)


def write_outputs(cfg: Config, date: dt.date, model: ALSModel, candidates: DataFrame) -> None:
    """Write factors and candidates of D as one new version of `als`: readers see the new
    three together or the old three, never new user factors beside old item factors."""
    io.write_version(model.userFactors.select(F.col("id").alias(USER_IDX), "features"), cfg, "als_user_factors",
                     date, files=2)
    io.write_version(model.itemFactors.select(F.col("id").alias(ITEM_IDX), "features"), cfg, "als_item_factors",
                     date, files=1)
    io.write_version(candidates, cfg, "als_candidates", date, files=4)


def evaluate(
    spark: SparkSession,
    cfg: Config,
    date: dt.date,
    events: DataFrame,
    interactions: DataFrame,
    seen: DataFrame,
    candidates: DataFrame,
    candidate_rows: int,
) -> dict[str, float]:
    """ALS, popularity and (on generated data) the oracle, on the users active in the
    evaluation days (`als.eval_users: warm`: only those of them with a factor)."""
    ks = sorted(cfg.als.eval_ks)
    relevant = relevant_items(events, date, days=cfg.evaluation.days)
    if cfg.als.eval_users == "warm":
        relevant = relevant.join(candidates.select(USER_IDX).distinct(), USER_IDX)
    relevant = relevant.cache()
    catalogue_size = catalogue_items(spark, cfg, date)
    # Only the evaluated users' lists count (the metrics join them to `relevant`), and no
    # task gathers more than about `spark.list_rows_per_task` candidates into lists.
    evaluated = (candidates.join(relevant.select(USER_IDX), USER_IDX, "left_semi")
                 .repartition(list_partitions(spark, candidate_rows, cfg), USER_IDX))
    methods = {
        "als": ranked_lists(evaluated, ALS_SCORE, max(ks)),
        "popularity": popularity_lists(
            interactions, seen if cfg.als.exclude_seen else seen.limit(0), relevant.select(USER_IDX), max(ks)
        ),
    }
    oracle = oracle_lists(spark, cfg, date, max(ks))
    if oracle is not None:
        methods["oracle"] = oracle
    metrics = {"eval_users": float(relevant.count())}
    for method, predictions in methods.items():
        for name, value in retrieval_metrics(predictions, relevant, ks, catalogue_size).items():
            metrics[f"{method}_{name}"] = value
    relevant.unpersist()
    return metrics


def catalogue_items(spark: SparkSession, cfg: Config, date: dt.date) -> int:
    day = io.latest_day(cfg, "dim_items", date)
    return io.read_day(spark, cfg, "dim_items", day).count() if day else 0


def oracle_lists(spark: SparkSession, cfg: Config, date: dt.date, max_k: int) -> DataFrame | None:
    """Day D's shown items ranked by their true click probability (generated data only).

    The generator's truth knows p_click only for the items it showed, so this is the
    ceiling of re-ranking what was shown, a reference rather than a competitor.
    """
    truth = cfg.table_path("truth_impressions", date)
    users_day = io.latest_day(cfg, "dim_users", date + dt.timedelta(days=1))
    if not paths.exists(truth) or users_day is None:
        return None
    users = io.read_day(spark, cfg, "dim_users", users_day).select(USER_ID, USER_IDX)
    items = io.read_day(spark, cfg, "dim_items", io.latest_day(cfg, "dim_items", date + dt.timedelta(days=1))).select(ITEM_ID, ITEM_IDX)
    shown = (
        io.read_path(spark, truth)
        .join(users, USER_ID)
        .join(items, ITEM_ID)
        .groupBy(USER_IDX, ITEM_IDX)
        .agg(F.max("p_click").alias("p_click"))
    )
    return ranked_lists(shown, "p_click", max_k)


def log_to_mlflow(cfg: Config, date: dt.date, als_cfg: AlsConfig, model: ALSModel, interactions: DataFrame,
                  summary: dict) -> str:
    """Log the run (parameters, metrics, config, input, the Spark model); returns its id."""
    import mlflow
    import mlflow.spark

    from recpipe.tracking import spark_dataset, start_run

    with start_run(cfg, ALS_EXPERIMENT, run_name=f"als-{date}", tags={"date": date.isoformat(), "stage": "als"}) as run:
        mlflow.log_params({k: v for k, v in cfg.to_dict()["als"].items()})
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_dict(cfg.to_dict(), "config.yaml")
        mlflow.log_input(spark_dataset(interactions, path=cfg.table_path("events"), name=f"interactions-{date}",
                                       rows=summary["interactions"]), context="training")
        mlflow.spark.log_model(  # the Spark flavour still takes artifact_path, not name=
            model,
            artifact_path="als-model",
            # Named, so MLflow does not infer them by reloading the model in a new process
            # with a JVM of its own (about 10 s, whatever the data's size).
            pip_requirements=[*mlflow.spark.get_default_pip_requirements(), f"numpy=={np.__version__}"],
            registered_model_name=ALS_MODEL if als_cfg.register_model else None,
        )
    return run.info.run_id


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """The events of `event_days`, the item dictionary that sizes the catalogue, and on
    generated data the planted truth of D (the oracle's lists)."""
    snapshot = io.latest_day(cfg, "dim_items", date)
    return [*days("events", *event_days(cfg, date)), *([Partition("dim_items", snapshot)] if snapshot else []),
            Partition("truth_impressions", date)]


STAGE = Stage(
    name="als",
    help="train implicit ALS on the window before D, write top-K candidates, evaluate on D",
    config=("als", "evaluation.days"),
    reads=reads,
    writes=lambda cfg, date: [Partition("als", date)],
    run=run,
    rows=lambda summary: (summary.get("interactions"), summary.get("candidate_rows")),
)
