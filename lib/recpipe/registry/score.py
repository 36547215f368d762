"""`recpipe score --date D`: the champion re-ranks every user's ALS candidates.

The champion's version is resolved once on the driver and pinned, so every partition
scores with the same model even if `champion` moves while the job runs. Each partition
fetches that version's weights and vocabulary from the registry (one load per
partition) and scores at the index level: `mapInArrow` hands Arrow batches of integer indexes and float features
to the network as numpy arrays, the history comes from D's sequences (already indexes),
and string ids are joined only to the top N kept. `CandidateScorer.score_indexes` maps
the indexes through the model's own vocabulary exactly as its string-id path does.

`candidate_rows` builds the same rows in the consumer's format (string ids) for
`recpipe recommend`, which explains a list through the pyfunc's network.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import io, tables
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.dictionaries import ITEMS, USERS, read_snapshot
from recpipe.etl.vocabulary import snapshot_reads
from recpipe.names import CHAMPION, RANKER_MODEL
from recpipe.registry.promote import client_for, version_by_alias
from recpipe.schema import HIST_ITEMS, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.serving.columns import ALS_SCORE, HISTORY, ITEM_DENSE, USER_DENSE, dense_column
from recpipe.spark import list_partitions
from recpipe.splits import parquet_rows
from recpipe.stage import Partition, Stage
from recpipe.tracking import tracking_uri

if TYPE_CHECKING:
    from recpipe.serving.scoring import CandidateScorer

log = logging.getLogger("recpipe.score")

SCORE, RANK, MODEL_VERSION = "score", "rank", "model_version"
MODEL_INPUT = (ITEM_ID, HISTORY, USER_ID, USER_DENSE, ITEM_DENSE, ALS_SCORE)
CANDIDATES = "candidates"  # a user's ALS candidates in `user_rows`: item_idx and als_score
TOP_SCHEMA = f"{USER_IDX} int, {ITEM_IDX} int, {SCORE} double, {RANK} int"


@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Score D's candidates with the champion and publish the top N per user."""
    champion = version_by_alias(client_for(cfg), CHAMPION)
    if champion is None:
        raise DataError(f"score {date}: {RANKER_MODEL} has no '{CHAMPION}' version; promote one first")
    # One partition per core: each loads the model once.
    users = user_rows(spark, cfg, date, exclude_history=cfg.score.exclude_history).repartition(
        spark.sparkContext.defaultParallelism, USER_IDX)
    scorer = score_users(f"models:/{RANKER_MODEL}/{champion.version}", tracking_uri(cfg),
                         spark.sparkContext.broadcast(item_dense_table(spark, cfg, date)), cfg.score.top_n,
                         cfg.score.torch_threads)
    with arrow_batch_rows(spark, cfg.score.batch_users):
        top = (users.mapInArrow(scorer, TOP_SCHEMA)
               .join(dictionary(spark, cfg, "dim_users", date), USER_IDX)
               .join(dictionary(spark, cfg, "dim_items", date), ITEM_IDX)
               .withColumn(MODEL_VERSION, F.lit(str(champion.version))))
        location = io.write_version(top.select(USER_ID, ITEM_ID, SCORE, RANK, MODEL_VERSION, USER_IDX, ITEM_IDX),
                                    cfg, "recommendations", date, cfg.score.files_per_day)
    written = io.read_path(spark, location)
    summary = written.agg(F.count("*").alias("rows"), F.countDistinct(USER_IDX).alias("users")).first()
    log.info("score %s: %d recommendations for %d users from %s version %s at %s", date, summary["rows"],
             summary["users"], RANKER_MODEL, champion.version, location)
    return {"rows": summary["rows"], "users": summary["users"], "model_version": champion.version}


def champion_version(cfg: Config) -> str:
    version = version_by_alias(client_for(cfg), CHAMPION)
    return version.version if version is not None else "none"


@contextmanager
def arrow_batch_rows(spark: SparkSession, rows: int) -> Iterator[None]:
    """Arrow batches of `rows` rows for the Python workers while inside (Spark's default
    is 10,000), restored after: the session is shared with the stages that follow."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def user_rows(spark: SparkSession, cfg: Config, date: dt.date, exclude_history: bool) -> DataFrame:
    """D's ALS candidates by user, as the network takes them: one row per user with the
    candidates (`candidates`: item_idx and als_score), the history indexes of D's
    sequences (`hist_items`, 0-padded) and the user's dense features. A history is
    carried once per user, not once per candidate, and no string id is looked up: the
    dictionaries are joined only to the top N that are kept."""
    candidates_at = io.location(cfg, "als_candidates", date)
    if candidates_at is None:
        raise DataError(f"score {date}: no ALS candidates at {cfg.table_path('als_candidates', date)}; "
                        f"run `recpipe als --date {date}`")
    candidates = io.read_path(spark, candidates_at).select(USER_IDX, ITEM_IDX, ALS_SCORE)
    if not io.table_exists(cfg, "sequences", date):
        raise DataError(f"score {date}: no sequences for {date}; run `recpipe features --date {date}`")
    sequences = io.read_day(spark, cfg, "sequences", date).select(USER_IDX, HIST_ITEMS)
    partitions = list_partitions(spark, parquet_rows(candidates_at), cfg)  # before the anti join: an upper bound
    if exclude_history:
        interacted = sequences.select(USER_IDX, F.explode(HIST_ITEMS).alias(ITEM_IDX)).where(F.col(ITEM_IDX) > 0)
        candidates = candidates.join(interacted, [USER_IDX, ITEM_IDX], "left_anti")
    return (
        candidates
        .repartition(partitions, USER_IDX)
        .groupBy(USER_IDX)
        .agg(F.collect_list(F.struct(ITEM_IDX, ALS_SCORE)).alias(CANDIDATES))
        .join(sequences, USER_IDX, "left")
        .join(features(spark, cfg, "user_features", date, USER_IDX, USER_DENSE), USER_IDX, "left")
        .select(USER_IDX, CANDIDATES, HIST_ITEMS, USER_DENSE)
    )


def item_dense_table(spark: SparkSession, cfg: Config, date: dt.date) -> np.ndarray:
    """D's item features as a (largest item_idx + 1, I) float32 matrix, NaN where an item
    has none. One row per catalogue item (not per event): sent to every scoring task
    once, as a broadcast, instead of being joined onto every candidate row."""
    items = features(spark, cfg, "item_features", date, ITEM_IDX, ITEM_DENSE).toPandas()
    if items.empty:
        return np.full((1, 0), np.nan, np.float32)
    width = max(len(v) for v in items[ITEM_DENSE] if v is not None)
    table = np.full((int(items[ITEM_IDX].max()) + 1, width), np.nan, np.float32)
    table[items[ITEM_IDX].to_numpy()] = dense_column(items, ITEM_DENSE, len(items), width)
    return table


def score_users(model_uri: str, uri: str, item_dense: Broadcast, top: int, torch_threads: int
                ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The per-partition scorer for `mapInArrow` over `user_rows`: load the pinned version
    once, then for each Arrow batch of users score every candidate with numpy arrays
    straight from Arrow (`CandidateScorer.score_indexes`, the same id mapping and network
    the registered pyfunc applies to string ids) and keep each user's `top` best."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        torch.set_num_threads(torch_threads)
        scorer = pinned_scorer(model_uri, uri)
        items = item_dense.value
        for batch in batches:
            arrays = network_arrays(batch, scorer.config.user_dense_dim, items, scorer.config.item_dense_dim)
            scores = scorer.score_indexes(**arrays)
            users, chosen, ranks = top_per_user(batch.column(USER_IDX).to_numpy(), arrays["repeat"],
                                                arrays["item_idx"], scores, top)
            yield pa.RecordBatch.from_arrays(
                [pa.array(users, pa.int32()), pa.array(arrays["item_idx"][chosen], pa.int32()),
                 pa.array(scores[chosen]), pa.array(ranks, pa.int32())], names=[USER_IDX, ITEM_IDX, SCORE, RANK])

    return score


def pinned_scorer(model_uri: str, uri: str) -> CandidateScorer:
    """A `CandidateScorer` of this recpipe's code over the weights and vocabulary that the
    registry version `model_uri` holds. Not the version's own pickled code: a version
    registered by an older recpipe lacks the index-level path, and the network and the
    id mapping are the same code either way (tests compare the two)."""
    import mlflow
    from mlflow.models import Model

    from recpipe.serving.pyfunc import VOCABULARY, WEIGHTS
    from recpipe.serving.scoring import CandidateScorer  # PyTorch, only when a stage scores

    mlflow.set_tracking_uri(uri)  # executors do not inherit the driver's MLflow settings
    with tempfile.TemporaryDirectory(prefix="recpipe-score-") as tmp:
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp)
        artifacts = Model.load(local).flavors["python_function"]["artifacts"]
        return CandidateScorer.from_files(os.path.join(local, artifacts[WEIGHTS]["path"]),
                                          os.path.join(local, artifacts[VOCABULARY]["path"]))


def network_arrays(batch: pa.RecordBatch, user_dim: int, item_dense: np.ndarray, item_dim: int
                   ) -> dict[str, np.ndarray]:
    """`score_indexes`' arguments from one batch of `user_rows`, without Python loops:
    every user's candidates in order, each user's history and features once (`repeat`)."""
    candidates = batch.column(CANDIDATES)
    flat = pc.list_flatten(candidates)
    history = batch.column(HIST_ITEMS)
    item_idx = flat.field(ITEM_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
    return {
        "item_idx": item_idx,
        "hist_items": pc.list_flatten(history).to_numpy(zero_copy_only=False),
        "hist_lengths": pc.list_value_length(history).fill_null(0).to_numpy(zero_copy_only=False),
        "user_dense": dense_matrix(batch.column(USER_DENSE), user_dim),
        "item_dense": item_rows(item_dense, item_idx, item_dim),
        "als_score": pc.fill_null(flat.field(ALS_SCORE), float("nan")).to_numpy(zero_copy_only=False),
        "repeat": pc.list_value_length(candidates).fill_null(0).to_numpy(zero_copy_only=False),
    }


def item_rows(table: np.ndarray, item_idx: np.ndarray, dim: int) -> np.ndarray:
    """(B, dim) features of the candidates from `item_dense_table`; NaN (unknown) for an
    item without features or a table of another width than the network's."""
    if table.shape[1] != dim:
        return np.full((len(item_idx), dim), np.nan, np.float32)
    inside = item_idx < len(table)
    return np.where(inside[:, None], table[np.where(inside, item_idx, 0)], np.float32(np.nan))


def dense_matrix(lists: pa.Array, dim: int) -> np.ndarray:
    """(rows, dim) float32 from a list column; a null or a list of another length is a row
    of NaN, which the network reads as unknown (the training mean), as the pyfunc does."""
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32)
    out = np.full((len(lengths), dim), np.nan, np.float32)
    whole = lengths == dim
    if dim and whole.any():
        starts = np.cumsum(lengths) - lengths
        out[whole] = flat[starts[whole, None] + np.arange(dim)]
    return out


def top_per_user(users: np.ndarray, counts: np.ndarray, items: np.ndarray, scores: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's n best candidates: (user of each kept row, the kept rows' positions in
    the candidate arrays, rank 1..n). Users' candidates are consecutive, `counts` each;
    ties are broken by item index, so the list is deterministic."""
    segment = np.repeat(np.arange(len(users)), counts)
    order = np.lexsort((items, -scores, segment))  # by user, best score first, then item index
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[segment[order]] + 1
    kept = rank <= n
    return users[segment[order[kept]]], order[kept], rank[kept]


def model_input(rows: pd.DataFrame) -> pd.DataFrame:
    """The consumer columns, with lists where the signature wants lists: Arrow hands over
    numpy arrays, and a user without history or features gets an empty list (the model
    reads an empty feature list as unknown and uses the training mean)."""
    inputs = rows[list(MODEL_INPUT)].copy()
    for column in (HISTORY, USER_DENSE, ITEM_DENSE):
        inputs[column] = [[] if v is None else list(v) for v in inputs[column]]
    return inputs


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
