"""The training function every rank runs, and the `Trainer` that owns the loop.

`train(job)` is what TorchDistributor ships to its processes and what
`python -m recpipe.ranker.launch` runs under torchrun: it joins the process group from
the environment, builds the model, trains up to `job.epochs` epochs of exactly
`steps_per_epoch(...)` steps on every rank, checkpoints after each epoch, stops early when
the valid AUC has not improved for `early_stopping_patience` epochs, restores the best
epoch's weights and returns the same summary on every rank.

Runs repeat: the seed fixes the initial weights, dropout and every rank's data order
(one Petastorm reader thread per rank; see `TrainStream`), and gloo's reductions are
deterministic, so two runs with one seed train the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from recpipe.config import RankerConfig
from recpipe.logs import stderr_is_terminal
from recpipe.metrics import auc, logloss
from recpipe.ranker import checkpoints, dist
from recpipe.ranker.data import TrainStream, tensor_batches
from recpipe.serving.model import RankerModel, build_model, model_inputs
from recpipe.splits import FEATURES, LABEL, iter_split

log = logging.getLogger("recpipe.ranker.trainer")


@dataclass(frozen=True)
class TrainJob:
    """Everything a rank needs, passed in explicitly (driver settings do not reach ranks).

    Args:
        name: the model's name in metrics and checkpoints (`attention`, `mean`).
        model_config: `RankerModelConfig.to_dict()`.
        train_location / valid_location: split folders of `ranker_input` ("" = no validation).
        train_rows: rows of the train split; with the global batch it fixes the steps per epoch.
        checkpoint_dir: this model's checkpoint folder.
        resume: continue from the latest checkpoint in `checkpoint_dir` if there is one.
        tracking_uri / run_id: where rank 0 logs; an empty run id logs nowhere.
        resolved_config: the whole recpipe config, saved with every checkpoint.
        The other fields are `ranker:` settings (`from_ranker_config`); their defaults
        live in conf/base.yaml only.
    """

    name: str
    model_config: dict
    train_location: str
    valid_location: str
    train_rows: int
    checkpoint_dir: str
    global_batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float
    item_weight_decay: float
    early_stopping_patience: int
    seed: int
    shuffle_queue: int
    reader_workers: int
    eval_batch_size: int
    use_gpu: bool
    resume: bool
    progress: bool
    tracking_uri: str = ""
    run_id: str = ""
    resolved_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_ranker_config(rc: RankerConfig) -> dict[str, Any]:
    """The TrainJob fields that come from the `ranker:` section. The progress bar is shown
    only when this process's stderr is a terminal: the ranks' own stderr is a pipe to the
    launcher either way, so they cannot tell."""
    return dict(global_batch_size=rc.batch_size, epochs=rc.epochs, learning_rate=rc.learning_rate,
                weight_decay=rc.weight_decay, item_weight_decay=rc.item_weight_decay,
                early_stopping_patience=rc.early_stopping_patience, seed=rc.seed, shuffle_queue=rc.shuffle_queue,
                reader_workers=rc.reader_workers, eval_batch_size=rc.eval_batch_size, use_gpu=rc.use_gpu,
                resume=rc.resume, progress=rc.progress and stderr_is_terminal())


def steps_per_epoch(train_rows: int, global_batch_size: int) -> int:
    """Steps every rank takes per epoch: one pass over the train rows at the global batch."""
    return max(1, math.ceil(train_rows / global_batch_size))


def per_rank_batch(global_batch_size: int, world: int) -> int:
    """The global batch split across ranks; it must divide evenly."""
    if global_batch_size % world:
        raise ValueError(f"ranker.batch_size {global_batch_size} does not split evenly across {world} ranks")
    return global_batch_size // world


def parameter_checksum(model: nn.Module) -> str:
    """A digest of every parameter's and buffer's bytes: equal on two ranks iff their
    weights (and BatchNorm statistics) are identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RunLogger:
    """Per-epoch metrics into one MLflow run, from rank 0 only, by explicit URI and run id."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str):
        self.prefix = prefix
        self.client = None
        if run_id and dist.is_main():
            from mlflow import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(f"{self.prefix}_{k}", float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=values)


class Trainer:
    """Owns the optimizer and the loop; wraps the model in DDP itself.

    Args:
        job: the training job.
        model: the unwrapped network, on `device`.
        device: this rank's device.
        batches: an endless iterator of training batches for this rank.
    """

    def __init__(self, job: TrainJob, model: RankerModel, device: torch.device, batches: Iterator[dict]):
        self.job = job
        self.device = device
        self.raw_model = model
        self.optimizer = torch.optim.AdamW(parameter_groups(model, job), lr=job.learning_rate)
        self.steps_per_epoch = steps_per_epoch(job.train_rows, job.global_batch_size)
        self.total_steps = self.steps_per_epoch * job.epochs
        self.step = 0
        self.epoch = 0
        self.batches = batches
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.logger = RunLogger(job.tracking_uri, job.run_id, job.name)
        self.history: list[dict[str, float]] = []
        self.model: nn.Module = model  # wrapped after a resume has restored the weights

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer state, step and epoch."""
        if dict(state["model_config"]) != dict(self.job.model_config):
            raise ValueError(f"{self.job.checkpoint_dir}: the checkpoint was made with another model config")
        self.raw_model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.history = list(state.get("history", []))

    def wrap(self) -> None:
        if dist.is_distributed():
            # DDP broadcasts rank 0's weights and buffers now, and all-reduces gradients in backward.
            self.model = DDP(self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs, or until the valid AUC stops improving; returns one
        metrics dict per epoch trained (all epochs, a resumed run's earlier ones too)."""
        bar = self._progress_bar()
        try:
            for epoch in range(self.epoch + 1, self.job.epochs + 1):
                if self.stalled():
                    break
                metrics = self._run_epoch(epoch, bar)
                dist.broadcast_buffers(self.raw_model)
                metrics.update(self._evaluate())
                self.epoch = epoch
                self.history.append({"epoch": epoch, "step": self.step, **metrics})
                self.logger.log(metrics, step=epoch)
                self._save_checkpoint(epoch)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def best_epoch(self) -> int:
        """The epoch with the highest valid AUC (the earliest of equals); the last epoch
        when there is no validation."""
        scored = [(h["valid_auc"], -h["epoch"]) for h in self.history if math.isfinite(h.get("valid_auc", math.nan))]
        return -max(scored)[1] if scored else self.epoch

    def stalled(self) -> bool:
        """Whether the last `early_stopping_patience` epochs all came after the best one.
        Every rank decides from the same broadcast metrics, so they stop together."""
        patience = self.job.early_stopping_patience
        return bool(patience) and bool(self.history) and self.epoch - self.best_epoch() >= patience

    def _progress_bar(self):
        if not (self.job.progress and dist.is_main()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.job.name}", unit="step",
                    mininterval=2.0, dynamic_ncols=True)

    def _run_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step; returns the (detached) batch loss, without syncing the device."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.model.train()
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.model(*model_inputs(batch))
        loss = self.loss_fn(logits.float(), batch[LABEL].float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients all-reduced (averaged) across ranks here
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def _run_epoch(self, epoch: int, bar) -> dict[str, float]:
        """Exactly `steps_per_epoch` steps on every rank, whatever the size of its shard."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        started = time.perf_counter()
        for i in range(self.steps_per_epoch):
            loss = self._run_batch(next(self.batches))
            total += loss
            if bar is not None:
                bar.update(1)
                if i % 20 == 0 or i == self.steps_per_epoch - 1:
                    rate = (i + 1) * self.job.global_batch_size / (time.perf_counter() - started)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", samples_s=f"{rate:,.0f}")
        seconds = time.perf_counter() - started
        loss_sum, = dist.all_reduce_sum([total.item()], self.device)  # all-reduce: a sync point across ranks
        return {
            "train_loss": loss_sum / (self.steps_per_epoch * dist.world_size()),
            "samples_per_s": self.steps_per_epoch * self.job.global_batch_size / seconds,
        }

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Validation logloss and AUC over every valid row: each rank scores its share of
        the row groups, one row group at a time (a rank holds one, not its whole share),
        and rank 0 computes the metrics and shares them."""
        if not self.job.valid_location:
            return {}
        self.raw_model.eval()
        scores, labels = [], []
        for arrays in iter_split(self.job.valid_location, (*FEATURES, LABEL), dist.rank(), dist.world_size()):
            scores += [torch.sigmoid(self.raw_model(*model_inputs(b)).float()).cpu().numpy()
                       for b in self._batches_on_device(arrays)]
            labels.append(arrays[LABEL])
        local = (np.concatenate(scores) if scores else np.empty(0, np.float32),
                 np.concatenate(labels) if labels else np.empty(0, np.float32))
        gathered = dist.gather_to_main(local)
        metrics = None
        if gathered is not None:
            p = np.concatenate([g[0] for g in gathered])
            y = np.concatenate([g[1] for g in gathered])
            metrics = {"valid_logloss": logloss(y, p), "valid_auc": auc(y, p)} if len(y) else {}
        return dist.broadcast_from_main(metrics)

    def _batches_on_device(self, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, torch.Tensor]]:
        for batch in tensor_batches(arrays, self.job.eval_batch_size):
            yield {k: v.to(self.device) for k, v in batch.items()}

    def _save_checkpoint(self, epoch: int) -> None:
        if dist.is_main():
            checkpoints.save(self.job.checkpoint_dir, epoch, {
                "model_state": {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()},
                "optimizer_state": self.optimizer.state_dict(),
                "step": self.step,
                "epoch": epoch,
                "history": self.history,
                "model_config": dict(self.job.model_config),
                "config": self.job.resolved_config,
                "job": self.job.to_dict(),
            })
        dist.barrier()  # a sync point: no rank moves on (or exits) before the checkpoint exists


def parameter_groups(model: nn.Module, job: TrainJob) -> list[dict[str, Any]]:
    """AdamW's groups: the item rows decay by `item_weight_decay` (a rare item's residual
    returns to its brand and category), everything else by `weight_decay`."""
    items = [p for n, p in model.named_parameters() if n == "item_embedding.weight"]
    rest = [p for n, p in model.named_parameters() if n != "item_embedding.weight"]
    return [{"params": items, "weight_decay": job.item_weight_decay},
            {"params": rest, "weight_decay": job.weight_decay}]


def train(job: TrainJob) -> dict[str, Any]:
    """Train one model on this rank; the same summary comes back on every rank.

    Returns:
        `name`, `steps`, `epochs`, `steps_per_epoch`, `world_size`, `history` (per-epoch
        metrics), `best_epoch`, `checkpoint` (the best epoch's, whose weights the caller
        loads), `checksums` (a digest of the best weights per rank).
    """
    with dist.process_group(job.use_gpu) as device:
        rank, world = dist.rank(), dist.world_size()
        torch.manual_seed(job.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        model = build_model(job.model_config).to(device)
        state = resume_state(job, device)
        done = int(state["epoch"]) if state else 0
        # Dropout and the shuffling queue draw from torch's global generator: seeded per rank,
        # and per resumed epoch so that a resumed run does not replay the first epoch's order.
        torch.manual_seed(job.seed + rank + 1_000_003 * done)
        # The reader's seed is the same on every rank: Petastorm also shuffles the row
        # groups with it before dealing them to shards, and the shards must partition them.
        data_seed = job.seed + 1_000_003 * done
        with TrainStream(job.train_location, per_rank_batch(job.global_batch_size, world), rank, world,
                         seed=data_seed, shuffle_queue=job.shuffle_queue, workers=job.reader_workers) as stream:
            trainer = Trainer(job, model, device, stream)
            if state is not None:
                trainer.restore(state)
            trainer.wrap()
            history = trainer.fit()
        best = trainer.best_epoch()
        best_checkpoint = checkpoints.at_epoch(job.checkpoint_dir, best)
        trainer.raw_model.load_state_dict(checkpoints.load(best_checkpoint, map_location=device)["model_state"])
        checksums = dist.gather_to_main(parameter_checksum(trainer.raw_model))
        return dist.broadcast_from_main({
            "name": job.name,
            "steps": trainer.step,
            "epochs": trainer.epoch,
            "best_epoch": best,
            "steps_per_epoch": trainer.steps_per_epoch,
            "world_size": world,
            "history": history,
            "checkpoint": best_checkpoint,
            "checksums": checksums,
        })


def train_each(jobs: Sequence[TrainJob]) -> list[dict[str, Any]]:
    """Train `jobs` one after the other in this rank's process, each as `train` would; one
    launch (process start, torch's import, the process group) serves them all."""
    with dist.process_group(jobs[0].use_gpu):
        return [train(job) for job in jobs]


def resume_state(job: TrainJob, device: torch.device) -> dict[str, Any] | None:
    """The latest checkpoint of this job when resuming and one exists, else None."""
    if not job.resume:
        return None
    location = checkpoints.latest(job.checkpoint_dir)
    if location is None:
        log.warning("%s: nothing to resume in %s; training from the start", job.name, job.checkpoint_dir)
        return None
    state = checkpoints.load(location, map_location=device)
    log.info("rank %d resumes %s from %s (epoch %d, step %d)", dist.rank(), job.name, location,
             state["epoch"], state["step"])
    return state
