"""Throughput of the ranker's input pipeline and of training on the CPU.

One run, on one synthetic `ranker_input` split (written with pyarrow, the shape of the
default samples: L = 50, 19 + 19 dense features, 16 files) in the table's wide layout
(a column per array position) and, for comparison, the older list-column layout,
measures samples per second of:

- `pyarrow → tensors`: every row group read with pyarrow and sliced into torch batches,
  no shuffling: the ceiling for any Parquet loader on this machine;
- `petastorm`: the training loader (`TrainStream`: make_batch_reader with shuffled row
  groups and rows, BatchedDataLoader), as configured (`ranker.shuffle_queue`), with the
  shuffling queue of `--shuffle-queue` rows, and on the list layout;
- `train step (in memory)`: forward + backward + AdamW of the attention network on
  batches already in memory: the compute ceiling;
- `train (petastorm)`: the real single-process training loop (`trainer.train`, one
  epoch), loader and compute together.

Ratios are against the pyarrow ceiling (loaders) or the in-memory step (training). On a
shared machine timings move with other work: the measures run in interleaved rounds
and the best round of each is reported, with the median beside it.

    .venv/bin/python benchmarks/loader_bench.py [--rows 200000] [--batch 1024] [--json out.json]
        [--conf conf/local.yaml] [--set ranker.reader_workers=1]   # the loader settings come from the config

Ends with `summary: petastorm_vs_pyarrow=… …`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from itertools import islice

import numpy as np
import torch
from recpipe.ranker.data import TrainStream, tensor_batches
from recpipe.ranker.settings import network_settings
from recpipe.ranker.toy import write_toy_split
from recpipe.ranker.trainer import TrainJob, from_ranker_config, train
from recpipe.serving.model import RankerModelConfig, build_model, model_inputs
from recpipe.splits import LABEL, TRAIN_COLUMNS, _fragments
from bench_pipeline import add_pipeline_args, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the synthetic split")
    parser.add_argument("--files", type=int, default=16, help="Parquet files (one row group each)")
    parser.add_argument("--batch", type=int, default=1024, help="batch size")
    parser.add_argument("--history", type=int, default=50, help="L")
    parser.add_argument("--shuffle-queue", type=int, default=20_000,
                        help="rows of the shuffling queue in the `petastorm_queue` measure")
    parser.add_argument("--train-batches", type=int, default=60, help="batches timed for the in-memory train step")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of every measure")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    add_pipeline_args(parser)  # --date is not used: the split is synthetic
    return parser.parse_args(argv)


def timed_rate(batches, batch_size: int, warmup: int = 2) -> float:
    """Samples per second over an iterator of batches, after a few warm-up batches."""
    iterator = iter(batches)
    for _ in islice(iterator, warmup):
        pass
    rows, started = 0, time.perf_counter()
    for batch in iterator:
        rows += len(batch[LABEL])
    seconds = time.perf_counter() - started
    return rows / seconds if seconds > 0 else float("nan")


def pyarrow_batches(location: str, batch_size: int):
    """Row group by row group with pyarrow, sliced into tensor batches (the ceiling)."""
    from recpipe.splits import _to_numpy, schema_columns, stored_columns

    stored = stored_columns(schema_columns(location), TRAIN_COLUMNS)
    for fragment in sorted(_fragments(location), key=lambda f: f.path):
        for group in range(fragment.metadata.num_row_groups):
            table = fragment.subset(row_group_ids=[group]).to_table(columns=stored)
            yield from tensor_batches(_to_numpy([table], TRAIN_COLUMNS), batch_size, TRAIN_COLUMNS)


def petastorm_batches(location: str, args: argparse.Namespace, shuffle_queue: int, count: int):
    torch.manual_seed(0)
    with TrainStream(location, args.batch, 0, 1, seed=0, shuffle_queue=shuffle_queue,
                     workers=args.cfg.ranker.reader_workers) as stream:
        yield from islice(stream, count)


def model_config(args: argparse.Namespace) -> RankerModelConfig:
    settings = network_settings(args.cfg.ranker)
    return RankerModelConfig(**settings, pooling="attention", item_vocab=5001, cat_vocab=41,
                             history_length=args.history, user_dense_dim=19, item_dense_dim=19)


def train_step_rate(args: argparse.Namespace, location: str) -> float:
    """Forward + backward + AdamW on in-memory batches (no loader)."""
    from recpipe.splits import read_split

    arrays = read_split(location, TRAIN_COLUMNS)
    batches = list(islice(tensor_batches(arrays, args.batch, TRAIN_COLUMNS), args.train_batches + 2))
    torch.manual_seed(0)
    model = build_model(model_config(args)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def steps():
        for batch in batches:
            loss = loss_fn(model(*model_inputs(batch)), batch[LABEL])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield batch

    return timed_rate(steps(), args.batch)


def train_loop_rate(args: argparse.Namespace, location: str, rows: int, checkpoints: str) -> float:
    """The real training function, one process, one epoch over `rows` rows."""
    settings = from_ranker_config(args.cfg.ranker)
    job = TrainJob(name="bench", model_config=model_config(args).to_dict(), train_location=location,
                   valid_location="", train_rows=rows, checkpoint_dir=checkpoints,
                   **{**settings, "global_batch_size": args.batch, "epochs": 1, "progress": False})
    return train(job)["history"][0]["samples_per_s"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.cfg, _ = pipeline_config(args)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training function's ranks read it
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="recpipe-loader-bench-") as tmp:
        location = f"{tmp}/train"
        per_file = args.rows // args.files
        shape = dict(history_length=args.history, items=5000, categories=40, user_dense=19, item_dense=19)
        write_toy_split(location, [per_file] * args.files, files=args.files, **shape)
        write_toy_split(f"{tmp}/lists", [per_file] * args.files, files=args.files, wide=False, **shape)
        queue = args.cfg.ranker.shuffle_queue
        rows = per_file * args.files
        batches = rows // args.batch
        train_rows = min(rows, args.batch * args.train_batches)
        measures = {
            "pyarrow_to_tensors": lambda: timed_rate(pyarrow_batches(location, args.batch), args.batch),
            "petastorm": lambda: timed_rate(petastorm_batches(location, args, queue, batches), args.batch),
            "petastorm_queue": lambda: timed_rate(
                petastorm_batches(location, args, args.shuffle_queue, batches), args.batch),
            "petastorm_list_layout": lambda: timed_rate(
                petastorm_batches(f"{tmp}/lists", args, queue, batches), args.batch),
            "train_step_in_memory": lambda: train_step_rate(args, location),
            "train_petastorm": lambda: train_loop_rate(args, location, train_rows, f"{tmp}/ckpt"),
        }
        # Rounds interleave the measures, so that a burst of other work on a shared machine
        # hits all of them alike; the best round of each is reported (the least disturbed).
        runs: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.repeat):
            for name, measure in measures.items():
                runs[name].append(measure())
    figures = {"rows": rows, "batch": args.batch, "history_length": args.history, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "rounds": runs,
               **{name: max(values) for name, values in runs.items()}}
    figures["petastorm_vs_pyarrow"] = round(figures["petastorm"] / figures["pyarrow_to_tensors"], 3)
    references = {"pyarrow_to_tensors": "pyarrow_to_tensors", "petastorm": "pyarrow_to_tensors",
                  "petastorm_queue": "pyarrow_to_tensors", "petastorm_list_layout": "pyarrow_to_tensors",
                  "train_step_in_memory": "train_step_in_memory",
                  "train_petastorm": "train_step_in_memory"}
    print(f"{'what':<24}{'best samples/s':>15}{'median':>10}  ratio (best)")
    for name, reference in references.items():
        median = float(np.median(runs[name]))
        print(f"{name:<24}{figures[name]:>15,.0f}{median:>10,.0f}  {figures[name] / figures[reference]:.2f}")
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(figures, out, indent=2)
    print(summary_line({"petastorm_vs_pyarrow": figures["petastorm_vs_pyarrow"],
                        **{k: v for k, v in figures.items() if k not in ("rounds", "petastorm_vs_pyarrow")}}))
    return figures


if __name__ == "__main__":
    main()
