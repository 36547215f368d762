"""The top-K kernel of one Spark task, alone: torch.topk against numpy's argpartition.

`lib/recpipe/als/topk.py` scores one partition of users against the broadcast item
factors, a block at a time, and keeps the running best K. This script times that kernel
outside Spark, on random factors of the 20 M-interaction benchmark's shape (52,500 items,
rank 64, K = 200, 50 seen items per user), in one process and on the same arrays:

- `matrix products only`: the products top_k_block computes, in its blocks, no selection: the floor;
- `numpy argpartition`: the kernel before torch.topk (kept here as the reference): every
  user of the partition against one item block, merged into the running best with
  np.argpartition and sorted with np.lexsort;
- `top_k_block`: the pipeline's kernel (torch.topk per block of users × block of items).

The two kernels must return the same scores, position by position, up to float32
rounding (numpy's and torch's matrix products round differently); the script stops with
an error if they do not. Where two items score within rounding of each other the kernels
may list them in either order; the report counts those positions.

    .venv/bin/python benchmarks/topk_bench.py [--users 10000] [--threads 2] [--json out.json]

Ends with `summary: top_k_block_s=… numpy_argpartition_s=… speed_up_vs_argpartition=… …`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from recpipe.als.topk import excluded_positions, keep_best, top_k_block
from bench_pipeline import add_pipeline_args, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000, help="users in the partition")
    parser.add_argument("--items", type=int, default=52500)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--seen", type=int, default=50, help="items excluded per user")
    parser.add_argument("--item-block-size", type=int, help="default: the config's als.item_block_size")
    parser.add_argument("--user-block-size", type=int, help="default: the config's als.user_block_size")
    parser.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (spark.task.cpus)")
    parser.add_argument("--json", help="also write the report as JSON here")
    add_pipeline_args(parser)  # --date is not used: the factors are random
    args = parser.parse_args(argv)
    cfg, _ = pipeline_config(args)
    args.item_block_size = args.item_block_size or cfg.als.item_block_size
    args.user_block_size = args.user_block_size or cfg.als.user_block_size
    return args


def numpy_top_k(user_vectors, item_ids, item_vectors, seen, k, block_size):
    """The argpartition kernel that top_k_block replaced, for reference."""
    n_users = len(user_vectors)
    best_scores = np.full((n_users, 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((n_users, 0), dtype=np.int64)
    excluded_rows, excluded_cols = excluded_positions(seen, item_ids)
    for start in range(0, len(item_ids), block_size):
        stop = min(start + block_size, len(item_ids))
        scores = user_vectors @ item_vectors[start:stop].T
        in_block = (excluded_cols >= start) & (excluded_cols < stop)
        scores[excluded_rows[in_block], excluded_cols[in_block] - start] = -np.inf
        block_ids = np.broadcast_to(item_ids[start:stop], scores.shape)
        best_scores, best_ids = keep_best(
            np.concatenate([best_scores, scores], axis=1), np.concatenate([best_ids, block_ids], axis=1), k
        )
    return best_ids, best_scores


def products_only(user_vectors, item_vectors, block_size, user_block_size):
    """The matrix products top_k_block does, in the same blocks, and nothing else."""
    users, items = torch.from_numpy(user_vectors), torch.from_numpy(item_vectors)
    for user_start in range(0, len(users), user_block_size):
        for start in range(0, len(items), block_size):
            users[user_start : user_start + user_block_size] @ items[start : start + block_size].T


def seconds(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    users = rng.normal(size=(args.users, args.rank)).astype(np.float32)
    items = rng.normal(size=(args.items, args.rank)).astype(np.float32)
    item_ids = np.arange(args.items, dtype=np.int64) * 2 + 1  # sorted, not positions
    seen = [rng.choice(item_ids, size=args.seen, replace=False) for _ in range(args.users)]

    with threadpool_limits(args.threads):
        _, floor_s = seconds(products_only, users, items, args.item_block_size, args.user_block_size)
        (ref_ids, ref_scores), numpy_s = seconds(numpy_top_k, users, item_ids, items, seen, args.k,
                                                 args.item_block_size)
        (ids, scores), ours_s = seconds(top_k_block, users, item_ids, items, seen, args.k, args.item_block_size,
                                        args.user_block_size)
    if scores.shape != ref_scores.shape or not np.allclose(scores, ref_scores, rtol=1e-5, atol=1e-5):
        raise SystemExit("top_k_block and the argpartition reference disagree on the best scores")

    report = {
        "users": args.users, "items": args.items, "rank": args.rank, "k": args.k, "seen": args.seen,
        "item_block_size": args.item_block_size, "user_block_size": args.user_block_size, "threads": args.threads,
        "matrix_products_only_s": round(floor_s, 2), "numpy_argpartition_s": round(numpy_s, 2),
        "top_k_block_s": round(ours_s, 2), "speed_up_vs_argpartition": round(numpy_s / ours_s, 2),
        "positions_swapped_by_rounding": int((ids != ref_ids).sum()), "positions": int(ids.size),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(summary_line(report))


if __name__ == "__main__":
    main()
