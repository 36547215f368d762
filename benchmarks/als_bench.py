"""Spark ALS vs the `implicit` library on one interaction matrix, and blocked top-K vs
recommendForAllUsers, in one run.

    .venv/bin/python benchmarks/als_bench.py [--conf conf/local.yaml] [--set k=v] [--date D]  # `make run`'s matrix
    .venv/bin/python benchmarks/als_bench.py --synthetic 21000000 --driver-memory 10g  # 20.2 M interactions

implicit runs twice: with its default conjugate-gradient solver (what its users run) and
with the exact Cholesky solver (`use_cg=False`, the same kind of solve as Spark's).
recommendForAllUsers runs with its default `blockSize` and over a small sweep of block
sizes; the blocked top-K is compared with both the default and the best of the sweep.
Ends with `summary: spark_s_per_iter=… implicit_cg_s_per_iter=… topk_speedup_vs_tuned=… …`.

How the two factorisations are matched (same rank, iterations, 2 threads each):
- Confidence. Spark reads a rating r as preference r > 0 with confidence 1 + alpha·|r|;
  implicit uses the matrix value v itself as the confidence (negative v: preference 0,
  confidence |v|). Feeding implicit v = sign(r)·(1 + alpha·|r|) with its own alpha = 1
  gives the same confidences and preferences.
- Regularisation. Spark's ALS-WR adds λ·n_u·I for a user with n_u ratings (n_i for an
  item); implicit adds one constant λ'·I to every row. No constant matches every row;
  we use λ' = λ · sqrt(mean n_u · mean n_i), the geometric mean of the two sides'
  average scaling, and report it.
Per-iteration time is the marginal cost: (fit with N iterations − fit with 1) / (N − 1),
so set-up (Spark's blocking and shuffles, implicit's transposes) is not counted.
Recall@K of both models is computed by the same numpy code from their factors on the
same held-out items and the same sample of users.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

from recpipe import io  # noqa: E402
from recpipe.als.evaluate import relevant_items  # noqa: E402
from recpipe.als.interactions import RATING, build_interactions  # noqa: E402
from recpipe.als.topk import top_k_block, top_k_candidates  # noqa: E402
from recpipe.spark import blas_implementation, get_spark  # noqa: E402
from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def synthetic_interactions(n: int, seed: int = 0, chunk_users: int = 20_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A clustered power-law matrix of about n distinct interactions plus 2 held-out items per user.

    Items fall in clusters; each user draws 80% of their items from 2 interest clusters
    (Zipf inside the cluster) and the rest from global popularity, so the matrix has a
    structure a factorisation can find. Repeated draws of a (user, item) pair collapse to
    one interaction, so users are drawn a chunk at a time and each chunk's number of draws
    is scaled by how many distinct pairs the chunks before it kept: the total lands near n
    (a single pass at a fixed rate kept only 42% of its draws at n = 20 M), and only one
    chunk's draws are in memory at a time.
    """
    rng = np.random.default_rng(seed)
    users, items, clusters = max(n // 50, 100), max(n // 400, 50), 200
    wanted = np.clip(rng.lognormal(np.log(40), 0.8, users), 3, 2000)
    wanted = wanted * (n / wanted.sum()) + 2  # distinct items per user, the 2 held-out ones included
    cluster_of_item = np.sort(rng.integers(0, clusters, items))
    starts = np.searchsorted(cluster_of_item, np.arange(clusters))
    sizes = np.diff(np.append(starts, items))
    interests = rng.integers(0, clusters, (users, 2))
    draws_per_kept, pieces = 1.25, []
    for first in range(0, users, chunk_users):
        chunk = np.arange(first, min(first + chunk_users, users))
        user_of_row = np.repeat(chunk, (wanted[chunk] * draws_per_kept).astype(np.int64))
        from_interest = rng.random(len(user_of_row)) < 0.8
        cluster = interests[user_of_row, rng.integers(0, 2, len(user_of_row))]
        zipf_rank = np.minimum(rng.zipf(1.05, len(user_of_row)) - 1, np.maximum(sizes[cluster] - 1, 0))
        item = np.where(from_interest, starts[cluster] + zipf_rank,
                        np.minimum(rng.zipf(1.2, len(user_of_row)) - 1, items - 1))
        piece = pd.DataFrame({"user_idx": (user_of_row + 1).astype(np.int32),
                              "item_idx": (item + 1).astype(np.int32)}).drop_duplicates()
        draws_per_kept *= float(np.clip(wanted[chunk].sum() / len(piece), 0.5, 4.0)) if len(piece) else 1.0
        pieces.append(piece)
    frame = pd.concat(pieces, ignore_index=True)
    # the last two distinct items of each user are held out
    frame["order"] = frame.groupby("user_idx").cumcount(ascending=False)
    held = frame[frame.order < 2][["user_idx", "item_idx"]]
    train = frame[frame.order >= 2][["user_idx", "item_idx"]].assign(**{RATING: np.float32(1.0)})
    return train.reset_index(drop=True), held.reset_index(drop=True)


def chain_interactions(spark, cfg, date: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline's own matrix for D (events before D) and D's positive items as held-out."""
    events = io.read_days(spark, cfg, "events", date - dt.timedelta(days=cfg.als.train_days), date)
    train = build_interactions(events, cfg.als.confidence_weights, date, cfg.als.train_days).toPandas()
    held = relevant_items(events, date).selectExpr("user_idx", "explode(relevant) as item_idx").toPandas()
    return train, held


def fit_spark(spark, train_path: str, rank: int, reg: float, alpha: float, iters: int, seed: int):
    from pyspark.ml.recommendation import ALS

    frame = spark.read.parquet(train_path)
    blocks = spark.sparkContext.defaultParallelism
    model = ALS(implicitPrefs=True, rank=rank, regParam=reg, alpha=alpha, maxIter=iters, seed=seed,
                userCol="user_idx", itemCol="item_idx", ratingCol=RATING, numUserBlocks=blocks,
                numItemBlocks=blocks, checkpointInterval=5, coldStartStrategy="drop").fit(frame)
    model.userFactors.count()
    model.itemFactors.count()
    return model


def spark_factors(model) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    users = model.userFactors.orderBy("id").toPandas()
    items = model.itemFactors.orderBy("id").toPandas()
    return (users.id.to_numpy(), np.stack(users.features).astype(np.float32),
            items.id.to_numpy(), np.stack(items.features).astype(np.float32))


def implicit_matrix(train: pd.DataFrame, alpha: float, n_users: int, n_items: int) -> sp.csr_matrix:
    """User × item confidences in implicit's convention: sign(r) · (1 + alpha·|r|)."""
    r = train[RATING].to_numpy(np.float32)
    values = np.sign(r) * (1.0 + alpha * np.abs(r))
    return sp.csr_matrix((values.astype(np.float32), (train.user_idx.to_numpy(), train.item_idx.to_numpy())),
                         shape=(n_users, n_items))


def fit_implicit(matrix: sp.csr_matrix, rank: int, reg: float, iters: int, seed: int, use_cg: bool):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=rank, regularization=reg, alpha=1.0, iterations=iters, use_cg=use_cg,
                                    calculate_training_loss=False, num_threads=2, random_state=seed)
    with threadpool_limits(1, "blas"):  # implicit parallelises over rows itself
        model.fit(matrix, show_progress=False)
    return model


def recall_at_k(user_ids, user_vecs, item_ids, item_vecs, train, held, k, sample_users, blocks: dict) -> float:
    """Mean recall@k over the sampled users with held-out items, seen items excluded;
    blocks: top_k_block's block sizes."""
    position = {u: i for i, u in enumerate(user_ids)}
    users = [u for u in sample_users if u in position]
    seen = train[train.user_idx.isin(users)].groupby("user_idx").item_idx.apply(np.array)
    truth = held[held.user_idx.isin(users)].groupby("user_idx").item_idx.apply(set)
    rows = np.array([position[u] for u in users])
    best, _ = top_k_block(user_vecs[rows], item_ids, item_vecs, [seen.get(u) for u in users], k, **blocks)
    recalls = [len(set(best[i]) & truth[u]) / len(truth[u]) for i, u in enumerate(users) if u in truth]
    return float(np.mean(recalls)) if recalls else float("nan")


def marginal(seconds_one: float, seconds_n: float, n: int) -> float:
    return (seconds_n - seconds_one) / (n - 1)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def run(args) -> dict:
    args.overrides = [*args.overrides, "spark.master=local[2]", f"spark.driver_memory={args.driver_memory}",
                      "spark.extra={spark.ui.enabled: 'false'}"]
    cfg, date = pipeline_config(args)
    if not args.synthetic:
        ensure_nightly(args, date)
    blocks = {"block_size": cfg.als.item_block_size, "user_block_size": cfg.als.user_block_size}  # the pipeline's
    spark = get_spark(cfg, "als-bench")
    spark.sparkContext.setLogLevel("ERROR")
    scratch = tempfile.mkdtemp(prefix="als-bench-")
    spark.sparkContext.setCheckpointDir(os.path.join(scratch, "checkpoints"))

    if args.synthetic:
        train, held = synthetic_interactions(args.synthetic)
        source = f"synthetic, {args.synthetic:,} requested"
    else:
        train, held = chain_interactions(spark, cfg, date)
        source = f"pipeline events under {cfg.paths.root}, D={date}"
    train_path = os.path.join(scratch, "train.parquet")
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), train_path, row_group_size=1_000_000)
    n_users, n_items = int(train.user_idx.max()) + 1, int(train.item_idx.max()) + 1
    mean_nu = train.groupby("user_idx").size().mean()
    mean_ni = train.groupby("item_idx").size().mean()
    implicit_reg = args.reg * float(np.sqrt(mean_nu * mean_ni))
    report = {"data": source, "interactions": len(train), "users": int(train.user_idx.nunique()),
              "items": int(train.item_idx.nunique()), "held_out": len(held), "rank": args.rank,
              "iterations": args.iters, "spark_reg": args.reg, "implicit_reg": implicit_reg, "alpha": args.alpha,
              "blas": blas_implementation(spark)}

    if args.topk_only:  # the same seeded matrix as a full run; one Spark fit gives the factors to rank with
        spark_model = fit_spark(spark, train_path, args.rank, args.reg, args.alpha, args.iters, 1)
        report.update(compare_top_k(spark_model, args.topk, args.equality_users, blocks, args.block_sizes))
        spark.stop()
        return report

    fit_spark(spark, train_path, args.rank, args.reg, args.alpha, 1, 1)  # warm-up: JIT, Python workers
    _, spark_one = timed(fit_spark, spark, train_path, args.rank, args.reg, args.alpha, 1, 1)
    spark_model, spark_n = timed(fit_spark, spark, train_path, args.rank, args.reg, args.alpha, args.iters, 1)
    matrix = implicit_matrix(train, args.alpha, n_users, n_items)
    report.update(spark_fit_s=spark_n, spark_s_per_iter=marginal(spark_one, spark_n, args.iters))
    implicit_models = {}
    for solver, use_cg in (("cg", True), ("cholesky", False)):
        fit_implicit(matrix, args.rank, implicit_reg, 1, 1, use_cg)  # warm-up
        _, one = timed(fit_implicit, matrix, args.rank, implicit_reg, 1, 1, use_cg)
        implicit_models[solver], n = timed(fit_implicit, matrix, args.rank, implicit_reg, args.iters, 1, use_cg)
        report[f"implicit_{solver}_fit_s"] = n
        report[f"implicit_{solver}_s_per_iter"] = marginal(one, n, args.iters)
        report[f"spark_over_implicit_{solver}_per_iter"] = (report["spark_s_per_iter"]
                                                            / report[f"implicit_{solver}_s_per_iter"])

    rng = np.random.default_rng(1)
    eval_users = rng.choice(held.user_idx.unique(), size=min(args.eval_users, held.user_idx.nunique()), replace=False)
    s_uid, s_u, s_iid, s_i = spark_factors(spark_model)
    all_users, all_items = np.arange(n_users), np.arange(n_items)
    for k in args.ks:
        report[f"spark_recall_at_{k}"] = recall_at_k(s_uid, s_u, s_iid, s_i, train, held, k, eval_users, blocks)
        for solver, model in implicit_models.items():
            report[f"implicit_{solver}_recall_at_{k}"] = recall_at_k(
                all_users, np.asarray(model.user_factors, np.float32), all_items,
                np.asarray(model.item_factors, np.float32), train, held, k, eval_users, blocks)

    print(json.dumps(report, indent=2), flush=True)  # the factorisations' figures, before the long top-K part
    if not args.skip_topk:
        report.update(compare_top_k(spark_model, args.topk, args.equality_users, blocks, args.block_sizes))
    spark.stop()
    return report


def compare_top_k(model, k: int, equality_users: int, blocks: dict, block_sizes: list[int]) -> dict:
    """Seconds of our blocked top-K and of recommendForAllUsers for every user (with its
    default blockSize and each of `block_sizes`), and whether the lists agree, for all
    users or, with equality_users > 0, for a random sample of that many (the check
    computes both lists again; at 20 M interactions all users would double the run's
    length)."""
    from pyspark.sql import functions as F

    ours = top_k_candidates(model.userFactors, model.itemFactors, seen=None, k=k, **blocks)
    ours.limit(1).collect()  # warm-up: start the Python workers once
    _, ours_s = timed(lambda: ours.write.format("noop").mode("overwrite").save())
    default_block = model.getBlockSize()
    sweep = {}
    for size in [default_block, *[b for b in block_sizes if b != default_block]]:
        model.setBlockSize(size)
        theirs = model.recommendForAllUsers(k)
        _, sweep[size] = timed(lambda: theirs.write.format("noop").mode("overwrite").save())
    model.setBlockSize(default_block)
    best_block = min(sweep, key=sweep.get)
    timings = {"topk_k": k, "blocked_topk_s": ours_s, "recommend_for_all_users_s": sweep[default_block],
               "recommend_for_all_users_default_block": default_block,
               "recommend_for_all_users_best_s": sweep[best_block], "recommend_for_all_users_best_block": best_block,
               "recommend_for_all_users_sweep_s": {str(b): t for b, t in sweep.items()},
               "topk_speedup": sweep[default_block] / ours_s, "topk_speedup_vs_tuned": sweep[best_block] / ours_s}
    # The equality check below computes both sides again (at 20 M interactions that took longer
    # than the timed runs), so the timings are printed first.
    print(json.dumps(timings), flush=True)
    checked = model.userFactors
    if equality_users:
        total = checked.count()
        checked = checked.sample(fraction=min(1.0, 1.1 * equality_users / total), seed=1).limit(equality_users).cache()
        ours = top_k_candidates(checked, model.itemFactors, seen=None, k=k, **blocks)
        theirs = model.recommendForUserSubset(checked.withColumnRenamed("id", "user_idx"), k)
    timings["topk_users_checked"] = checked.count()
    mine = ours.groupBy("user_idx").agg(F.sort_array(F.collect_list("item_idx")).alias("a"))
    spark_sets = theirs.select("user_idx", F.sort_array(F.col("recommendations.item_idx")).alias("b"))
    differing = (mine.join(spark_sets, "user_idx", "full")
                 .where(~F.coalesce(F.col("a") == F.col("b"), F.lit(False))).toPandas())
    return {**timings, "topk_users_with_different_items": len(differing), **boundary_ties(model, differing, k)}


def boundary_ties(model, differing: pd.DataFrame, k: int, tolerance: float = 1e-4) -> dict:
    """Whether the users whose two top-K sets differ only swap items tied at the K-th
    score: both sides score in float32 in a different order, so items within rounding of
    the boundary can fall either way. Exact float64 scores from the factors decide.

    Returns the number of users whose lists differ by more than a tie, and the largest
    score gap between an item only one side kept and that side's K-th score.
    """
    if differing.empty:
        return {"topk_users_differing_beyond_ties": 0, "topk_largest_boundary_gap": 0.0}
    from pyspark.sql import functions as F

    wanted = model.userFactors.where(F.col("id").isin([int(u) for u in differing.user_idx]))
    users = {r.id: np.asarray(r.features, np.float64) for r in wanted.collect()}
    items = {r.id: np.asarray(r.features, np.float64) for r in model.itemFactors.collect()}
    beyond, largest = 0, 0.0
    for row in differing.itertuples():
        ours, theirs = set(row.a if row.a is not None else []), set(row.b if row.b is not None else [])
        u = users[row.user_idx]
        score = {i: float(u @ items[i]) for i in ours | theirs}
        kth = min(sorted(score.values(), reverse=True)[:k]) if score else 0.0
        gap = max((kth - score[i] for i in ours ^ theirs), default=0.0)
        largest = max(largest, gap)
        beyond += gap > tolerance * max(abs(kth), 1.0)
    return {"topk_users_differing_beyond_ties": beyond, "topk_largest_boundary_gap": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pipeline_args(parser)
    parser.add_argument("--synthetic", type=int, default=0, help="use a synthetic matrix of about this many interactions")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--reg", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--topk", type=int, default=200)
    parser.add_argument("--skip-topk", action="store_true")
    parser.add_argument("--topk-only", action="store_true",
                        help="fit Spark ALS once and compare only the top-K (the factorisation figures are skipped)")
    parser.add_argument("--equality-users", type=int, default=0,
                        help="check the two top-K lists on a random sample of this many users (0 = all)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[256, 1024, 16384],
                        help="recommendForAllUsers blockSize values tried besides its default (4096)")
    parser.add_argument("--eval-users", type=int, default=20000)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(summary_line(report))


if __name__ == "__main__":
    main()
