"""Launching the DDP training of the networks: the jobs handed to every rank, TorchDistributor,
and what a failure tells the user (the last checkpoints to resume from)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from recpipe import paths
from recpipe.config import Config, RankerConfig
from recpipe.errors import RecpipeError
from recpipe.etl.samples import TRAIN, VALID
from recpipe.ranker import checkpoints
from recpipe.ranker.inputs import InputStats
from recpipe.ranker.trainer import TrainJob, from_ranker_config, train_each
from recpipe.serving.model import RankerModel, RankerModelConfig, build_model
from recpipe.splits import split_location


class TrainingError(RecpipeError):
    """A DDP training run failed (a rank died, the barrier stage was lost)."""


def checkpoint_dir(cfg: Config, date: dt.date, name: str) -> str:
    return paths.join_uri(cfg.table_path("checkpoints"), "ranker", f"dt={date.isoformat()}", name)


def make_job(cfg: Config, date: dt.date, name: str, config: RankerModelConfig, stats: InputStats,
             uri: str, run_id: str, folder: str | None = None) -> TrainJob:
    """The training of network `name`, checkpointing in `folder` (default: `checkpoint_dir`)."""
    rc = cfg.ranker
    folder = folder or checkpoint_dir(cfg, date, name)
    if not rc.resume:
        paths.delete_dir(folder)  # a fresh run never picks up another run's checkpoints
    return TrainJob(
        name=name,
        model_config=config.to_dict(),
        train_location=split_location(cfg, date, TRAIN),
        valid_location=split_location(cfg, date, VALID) if stats.rows[VALID] else "",
        train_rows=stats.rows[TRAIN],
        checkpoint_dir=folder,
        **from_ranker_config(rc),
        tracking_uri=uri,
        run_id=run_id,
        resolved_config=cfg.to_dict(),
    )


def launch(jobs: Sequence[TrainJob], rc: RankerConfig) -> list[dict[str, Any]]:
    """Run `train(job)` for each job, one after the other, on `num_processes` DDP ranks in
    one TorchDistributor launch (torchrun on the driver in local mode, barrier tasks on the
    executors otherwise); one summary per job. One launch for several networks: each
    launch costs seconds of process start and imports on every rank."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=rc.num_processes, local_mode=rc.local_mode, use_gpu=rc.use_gpu)
    try:
        return distributor.run(train_each, list(jobs))
    except Exception as err:  # a rank died, or the barrier stage failed: say what a rerun can do
        where = "the driver" if rc.local_mode else "the executors"
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        names = ", ".join(job.name for job in jobs)
        raise TrainingError(f"DDP training of {names} on {rc.num_processes} ranks ({where}) failed: {cause}. "
                            + resume_advice(jobs)) from err


def resume_advice(jobs: Sequence[TrainJob]) -> str:
    """What a rerun can continue from: each job's last checkpoint."""
    last = {job.name: checkpoints.latest(job.checkpoint_dir) for job in jobs}
    if not any(last.values()):
        return "No checkpoint was written; rerun from the start."
    resume = "rerun with --resume (ranker.resume=true) to continue from "
    if len(last) == 1:
        return f"Last checkpoint: {next(iter(last.values()))}; {resume}it."
    found = ", ".join(f"{name}: {location or 'none'}" for name, location in last.items())
    return f"Last checkpoints: {found}; {resume}them."


def load_trained(location: str) -> RankerModel:
    """The network saved in a checkpoint, on the CPU, in eval mode."""
    state = checkpoints.load(location)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model_state"])
    return model.eval()
