"""The ranker's CPU training step: samples/s by batch per rank, torch threads and torch.compile.

On a data root where the nightly for D has run (it is run first where it has not), this
reads D's train split of `ranker_input` into memory and builds each network (attention
and mean pooling) from its checkpoint of D's run, then times the training step the
trainer takes (forward, BCE loss, backward, AdamW step) on those rows in this one
process: the work of one DDP rank without the all-reduce and without the loader (the
loader has its own benchmark, `loader_bench.py`). The reference is the batch a rank
takes as configured (`ranker.batch_size` / `ranker.num_processes`) at `--threads`
threads, eager; every other setting is reported as its samples/s over the reference's,
measured in interleaved rounds, the best round of each kept. With `--compile` each batch
size is also timed through `torch.compile`, whose compile time (the first steps) is
reported apart: in the nightly it is paid by every rank of every training.

    .venv/bin/python benchmarks/train_step_bench.py [--batch 512 --batch 1024] [--threads 1] [--compile]
        [--conf conf/local.yaml] [--set k=v] [--date D]

Ends with `summary: attention.b512.samples_per_s=… attention.b1024.vs_reference=… …`.
"""

from __future__ import annotations

import argparse
import time

from bench_pipeline import add_pipeline_args, ensure_nightly, pipeline_config  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402

NETWORKS = ("attention", "mean")
WARMUP_STEPS = 10  # untimed: allocator warm-up, and torch.compile's compilation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_args(parser)
    parser.add_argument("--batch", type=int, action="append", default=[],
                        help="rows per step on one rank (repeatable; default: the configured one, x2 and x4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (one per rank in the nightly)")
    parser.add_argument("--compile", action="store_true", help="also time each batch size through torch.compile")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per setting and round")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (best kept)")
    return parser.parse_args(argv)


def load_networks(cfg, date) -> dict[str, dict]:
    """Each network's model config, from its last checkpoint of D's train stage."""
    from recpipe.ranker import checkpoints
    from recpipe.ranker.ddp import checkpoint_dir

    found = {}
    for name in NETWORKS:
        latest = checkpoints.latest(checkpoint_dir(cfg, date, name))
        if latest is not None:
            found[name] = checkpoints.load(latest)["model_config"]
    if not found:
        raise SystemExit(f"no checkpoint of D={date}'s train stage under {cfg.table_path('checkpoints')}")
    return found


def time_steps(model_config: dict, arrays: dict, batch: int, steps: int, compiled: bool, seed: int) -> dict:
    """Samples/s of `steps` training steps at `batch` rows after `WARMUP_STEPS` untimed ones."""
    import torch
    from torch import nn

    from recpipe.ranker.data import tensor_batches
    from recpipe.schema import LABEL
    from recpipe.serving.model import build_model, model_inputs
    from recpipe.splits import TRAIN_COLUMNS

    torch.manual_seed(seed)
    model = build_model(model_config)
    model.train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = [b for b in tensor_batches(arrays, batch, TRAIN_COLUMNS) if len(b[LABEL]) == batch]  # whole ones
    if not batches:
        raise SystemExit(f"{len(arrays[LABEL])} train rows: fewer than one batch of {batch}")
    wanted = WARMUP_STEPS + steps
    batches = (batches * (wanted // max(len(batches), 1) + 1))[:wanted]

    def step(b):
        loss = loss_fn(forward(*model_inputs(b)).float(), b[LABEL].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for b in batches[:WARMUP_STEPS]:
        step(b)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for b in batches[WARMUP_STEPS:]:
        step(b)
    return {"samples_per_s": round(steps * batch / (time.perf_counter() - started)), "warmup_s": round(warmup_s, 2)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, date = pipeline_config(args)
    ensure_nightly(args, date)
    import torch

    from recpipe.splits import TRAIN_COLUMNS, read_split, split_location

    torch.set_num_threads(args.threads)
    reference = cfg.ranker.batch_size // cfg.ranker.num_processes
    sizes = sorted(set(args.batch or [reference, 2 * reference, 4 * reference]) | {reference})
    modes = [False, True] if args.compile else [False]
    arrays = read_split(split_location(cfg, date, "train"), TRAIN_COLUMNS)
    rows = len(next(iter(arrays.values())))
    networks = load_networks(cfg, date)
    print(f"# D = {date}: {rows:,} train rows in memory; one process, {args.threads} torch thread(s); "
          f"the reference: {reference} rows per step (ranker.batch_size {cfg.ranker.batch_size} over "
          f"{cfg.ranker.num_processes} ranks), eager", flush=True)
    best: dict = {}
    for round_ in range(args.repeat):
        for name, model_config in networks.items():
            for batch in sizes:
                for compiled in modes:
                    figures = time_steps(model_config, arrays, batch, args.steps, compiled, seed=round_)
                    key = (name, batch, compiled)
                    if key not in best or figures["samples_per_s"] > best[key]["samples_per_s"]:
                        best[key] = figures
                    print(f"round {round_ + 1}: {name} batch {batch}{' compiled' if compiled else ''}: "
                          f"{figures['samples_per_s']:,} samples/s (warm-up {figures['warmup_s']} s)", flush=True)
    report: dict = {"rows": rows, "threads": args.threads, "reference_batch": reference}
    print("| network | rows per step | torch.compile | samples/s (best round) | vs reference | warm-up s |")
    print("|---|---|---|---|---|---|")
    for (name, batch, compiled), figures in sorted(best.items()):
        ratio = round(figures["samples_per_s"] / best[(name, reference, False)]["samples_per_s"], 2)
        print(f"| {name} | {batch} | {'yes' if compiled else 'no'} | {figures['samples_per_s']:,} | {ratio} | "
              f"{figures['warmup_s']} |")
        report.setdefault(name, {})[f"b{batch}{'_compiled' if compiled else ''}"] = {**figures, "vs_reference": ratio}
    print(summary_line(report))


if __name__ == "__main__":
    main()
