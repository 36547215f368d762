"""Launching the DDP training of one network: the job handed to every rank, TorchDistributor,
and what a failure tells the user (the last checkpoint to resume from)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from recpipe import paths
from recpipe.config import Config, RankerConfig
from recpipe.errors import RecpipeError
from recpipe.etl.samples import TRAIN, VALID
from recpipe.ranker import checkpoints
from recpipe.ranker.inputs import InputStats
from recpipe.ranker.trainer import TrainJob, from_ranker_config, train
from recpipe.serving.model import RankerModel, RankerModelConfig, build_model
from recpipe.splits import split_location


class TrainingError(RecpipeError):
    """A DDP training run failed (a rank died, the barrier stage was lost)."""


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
        **from_ranker_config(rc),
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
