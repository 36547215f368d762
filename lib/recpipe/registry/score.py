"""`recpipe score --date D`: the champion re-ranks every user's ALS candidates.

The champion's version is resolved once on the driver and pinned, so every partition
scores with the same model even if `champion` moves while the job runs. Each partition
loads it from the registry as any consumer does (`mapInPandas`, one load per partition)
and gets the rows in the consumer's format: string ids, the history as item ids as of D,
the dense features of D and the ALS score.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recpipe import io, tables
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.dictionaries import ITEMS, USERS, read_snapshot
from recpipe.etl.vocabulary import snapshot_reads
from recpipe.names import CHAMPION, RANKER_MODEL
from recpipe.registry.promote import client_for, version_by_alias
from recpipe.schema import HIST_ITEMS, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.serving.scoring import ALS_SCORE, HISTORY, ITEM_DENSE, USER_DENSE
from recpipe.stage import Partition, Stage
from recpipe.tracking import tracking_uri

log = logging.getLogger("recpipe.score")

SCORE, RANK, MODEL_VERSION = "score", "rank", "model_version"
MODEL_INPUT = (ITEM_ID, HISTORY, USER_ID, USER_DENSE, ITEM_DENSE, ALS_SCORE)
SCORED_SCHEMA = f"{USER_IDX} int, {ITEM_IDX} int, {USER_ID} string, {ITEM_ID} string, {SCORE} double"


@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Score D's candidates with the champion and publish the top N per user."""
    champion = version_by_alias(client_for(cfg), CHAMPION)
    if champion is None:
        raise DataError(f"score {date}: {RANKER_MODEL} has no '{CHAMPION}' version; promote one first")
    # One partition per core, by user: each loads the model once, and the top-N window
    # that follows finds every user's rows in one place.
    rows = candidate_rows(spark, cfg, date, exclude_history=cfg.score.exclude_history).repartition(
        spark.sparkContext.defaultParallelism, USER_IDX)
    scored = rows.mapInPandas(score_batches(f"models:/{RANKER_MODEL}/{champion.version}", tracking_uri(cfg)),
                              SCORED_SCHEMA)
    top = top_n(scored, cfg.score.top_n).withColumn(MODEL_VERSION, F.lit(str(champion.version)))
    location = io.write_version(top.select(USER_ID, ITEM_ID, SCORE, RANK, MODEL_VERSION, USER_IDX, ITEM_IDX), cfg,
                                "recommendations", date, cfg.score.files_per_day)
    written = io.read_path(spark, location)
    summary = written.agg(F.count("*").alias("rows"), F.countDistinct(USER_IDX).alias("users")).first()
    log.info("score %s: %d recommendations for %d users from %s version %s at %s", date, summary["rows"],
             summary["users"], RANKER_MODEL, champion.version, location)
    return {"rows": summary["rows"], "users": summary["users"], "model_version": champion.version}


def champion_version(cfg: Config) -> str:
    version = version_by_alias(client_for(cfg), CHAMPION)
    return version.version if version is not None else "none"


def score_batches(model_uri: str, uri: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The per-partition scorer: load the pinned version once, score every batch."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow

        mlflow.set_tracking_uri(uri)  # executors do not inherit the driver's MLflow settings
        # The rows are built here to the model's signature, so MLflow's per-row check of
        # the list columns (three quarters of the time) is skipped: the model's own
        # predict is called directly.
        model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
        for batch in batches:
            scores = np.asarray(model.predict(None, model_input(batch)), dtype=np.float64).reshape(-1)
            yield batch[[USER_IDX, ITEM_IDX, USER_ID, ITEM_ID]].assign(**{SCORE: scores})

    return score


def model_input(rows: pd.DataFrame) -> pd.DataFrame:
    """The consumer columns, with lists where the signature wants lists: Arrow hands over
    numpy arrays, and a user without history or features gets an empty list (the model
    reads an empty feature list as unknown and uses the training mean)."""
    inputs = rows[list(MODEL_INPUT)].copy()
    for column in (HISTORY, USER_DENSE, ITEM_DENSE):
        inputs[column] = [[] if v is None else list(v) for v in inputs[column]]
    return inputs


def top_n(scored: DataFrame, n: int) -> DataFrame:
    """Each user's n best items, `rank` 1..n; ties broken by item index (deterministic)."""
    order = Window.partitionBy(USER_IDX).orderBy(F.desc(SCORE), F.asc(ITEM_IDX))
    return scored.withColumn(RANK, F.row_number().over(order)).where(F.col(RANK) <= n)


def candidate_rows(spark: SparkSession, cfg: Config, date: dt.date, exclude_history: bool,
                   user_ids: list[str] | None = None) -> DataFrame:
    """D's ALS candidates with everything the model takes, one row per (user, candidate);
    only those of `user_ids` when given (filtered before the history is assembled)."""
    candidates_at = io.location(cfg, "als_candidates", date)
    if candidates_at is None:
        raise DataError(f"score {date}: no ALS candidates at {cfg.table_path('als_candidates', date)}; "
                        f"run `recpipe als --date {date}`")
    candidates = io.read_path(spark, candidates_at).select(USER_IDX, ITEM_IDX, ALS_SCORE)
    users, items = dictionary(spark, cfg, "dim_users", date), dictionary(spark, cfg, "dim_items", date)
    if user_ids is not None:
        users = users.where(F.col(USER_ID).isin(user_ids))
        candidates = candidates.join(users.select(USER_IDX), USER_IDX, "left_semi")
    histories = history_ids(spark, cfg, date, items, users.select(USER_IDX))
    if exclude_history:
        interacted = histories.select(USER_IDX, F.explode("_hist_idx").alias(ITEM_IDX))
        candidates = candidates.join(interacted, [USER_IDX, ITEM_IDX], "left_anti")
    return (
        candidates
        .join(users, USER_IDX)
        .join(items, ITEM_IDX)
        .join(histories.drop("_hist_idx"), USER_IDX, "left")
        .join(features(spark, cfg, "user_features", date, USER_IDX, USER_DENSE), USER_IDX, "left")
        .join(features(spark, cfg, "item_features", date, ITEM_IDX, ITEM_DENSE), ITEM_IDX, "left")
        .select(USER_IDX, ITEM_IDX, *MODEL_INPUT)
    )


def dictionary(spark: SparkSession, cfg: Config, table: str, date: dt.date) -> DataFrame:
    """(index, id) of the dictionary snapshot as of D."""
    day = io.latest_day(cfg, table, date)
    if day is None:
        raise DataError(f"score {date}: no {table} snapshot on or before {date} at {cfg.table_path(table)}")
    spec = USERS if table == USERS.table else ITEMS
    return read_snapshot(spark, cfg, spec, day).select(F.col(spec.index).cast("int").alias(spec.index), spec.key)


def history_ids(spark: SparkSession, cfg: Config, date: dt.date, items: DataFrame, users: DataFrame) -> DataFrame:
    """(user_idx, history: item ids most recent last, _hist_idx: item indexes) as of D,
    for the users in `users` (user_idx)."""
    if not io.table_exists(cfg, "sequences", date):
        raise DataError(f"score {date}: no sequences for {date}; run `recpipe features --date {date}`")
    positions = (
        io.read_day(spark, cfg, "sequences", date)
        .join(users, USER_IDX, "left_semi")
        .select(USER_IDX, F.posexplode(HIST_ITEMS).alias("_pos", ITEM_IDX))
        .where(F.col(ITEM_IDX) > 0)  # 0 is left padding
        .join(items, ITEM_IDX)
    )
    ordered = F.array_sort(F.collect_list(F.struct("_pos", ITEM_ID, ITEM_IDX)))
    return (
        positions
        .groupBy(USER_IDX)
        .agg(ordered.alias("_timeline"))
        .select(USER_IDX, F.col(f"_timeline.{ITEM_ID}").alias(HISTORY), F.col(f"_timeline.{ITEM_IDX}").alias("_hist_idx"))
    )


def features(spark: SparkSession, cfg: Config, table: str, date: dt.date, key: str, column: str) -> DataFrame:
    if not io.table_exists(cfg, table, date):
        raise DataError(f"score {date}: no {table} for {date}; run `recpipe features --date {date}`")
    return io.read_day(spark, cfg, table, date).select(key, column)


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """D's ALS candidates, sequences and features, and the id dictionaries as of D."""
    return [*[Partition(table, date, required=True)
              for table in ("als", "sequences", "user_features", "item_features")],
            *snapshot_reads(cfg, date, ("dim_users", "dim_items"))]


STAGE = Stage(
    name="score",
    help="re-rank D's ALS candidates with the champion; top N per user to lake/recommendations",
    config=("score",),
    reads=reads,
    writes=lambda cfg, date: [Partition("recommendations", date)],
    run=run,
    rows=lambda summary: (None, summary.get("rows")),
    registry=lambda cfg, date: {CHAMPION: champion_version(cfg)},
)
