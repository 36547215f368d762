"""DDP training of the ranker: 2 gloo ranks through TorchDistributor and torchrun,
uneven shards, resuming. Tiny Parquet data written with pyarrow; every test bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recpipe.ranker import checkpoints
from recpipe.ranker.toy import toy_model_config, write_toy_split
from recpipe.ranker.trainer import TrainJob, parameter_checksum, steps_per_epoch, train
from recpipe.serving.model import build_model

from tests.conftest import network_settings, ranker_settings

pytestmark = [pytest.mark.ddp, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")]

MODEL = toy_model_config(network_settings())


def job(tmp_path: Path, groups: list[int], **overrides) -> TrainJob:
    rows = write_toy_split(str(tmp_path / "train"), groups, files=2)
    write_toy_split(str(tmp_path / "valid"), [150, 100, 50], seed=1)
    values = dict(name="attention", model_config=MODEL.to_dict(), train_location=str(tmp_path / "train"),
                  valid_location=str(tmp_path / "valid"), train_rows=rows, checkpoint_dir=str(tmp_path / "ckpt"),
                  **ranker_settings(global_batch_size=64, epochs=1, shuffle_queue=256, reader_workers=1, progress=False,
                                    seed=3))
    values.update(overrides)
    return TrainJob(**values)


def distributor(processes: int = 2):
    from pyspark.ml.torch.distributor import TorchDistributor

    return TorchDistributor(num_processes=processes, local_mode=True, use_gpu=False)


def saved_checksum(location: str) -> str:
    state = checkpoints.load(location)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model_state"])
    return parameter_checksum(model)


@pytest.mark.spark
def test_two_gloo_ranks_through_torch_distributor_end_with_identical_parameters(spark, tmp_path):
    spec = job(tmp_path, [200, 200, 200, 200])

    result = distributor().run(train, spec)

    assert result["world_size"] == 2
    assert result["steps"] == steps_per_epoch(800, 64) == 13
    assert len(result["checksums"]) == 2 and result["checksums"][0] == result["checksums"][1]
    assert saved_checksum(result["checkpoint"]) == result["checksums"][0]  # what rank 0 saved is what both hold
    untrained = build_model(MODEL)
    assert result["checksums"][0] != parameter_checksum(untrained)  # and they did train
    assert {"train_loss", "valid_auc", "valid_logloss", "samples_per_s"} <= set(result["history"][0])


@pytest.mark.spark
def test_row_groups_split_unevenly_across_ranks_finish_without_hanging(spark, tmp_path):
    # Petastorm deals the 3 row groups to 2 ranks: one reads two of them, the other one
    # (as few as 40 rows). Both still take exactly 2 x ceil(730 / 64) steps; the smaller
    # shard wraps around.
    spec = job(tmp_path, [600, 90, 40], epochs=2)

    result = distributor().run(train, spec)

    assert result["steps"] == 2 * 12
    assert result["checksums"][0] == result["checksums"][1]


def test_resume_after_epoch_1_reaches_the_same_step_count_with_the_optimizer_state(tmp_path):
    full = train(job(tmp_path / "full", [300, 200, 100], epochs=2))
    spec = job(tmp_path / "cut", [300, 200, 100], epochs=2)
    train(spec)
    # A crash before epoch 2's checkpoint: the latest is epoch 1 again.
    (tmp_path / "cut" / "ckpt" / "epoch-0002.pt").unlink()
    (tmp_path / "cut" / "ckpt" / "latest.json").write_text(json.dumps({"epoch": 1, "file": "epoch-0001.pt"}))
    assert checkpoints.load(checkpoints.latest(spec.checkpoint_dir))["step"] == 10

    resumed = train(TrainJob(**{**spec.to_dict(), "resume": True}))

    assert resumed["steps"] == full["steps"] == 2 * steps_per_epoch(600, 64) == 20
    assert resumed["epochs"] == 2 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    state = checkpoints.load(checkpoints.latest(spec.checkpoint_dir))
    adam_steps = {float(s["step"]) for s in state["optimizer_state"]["state"].values()}
    assert adam_steps == {20.0}  # restored at 10 and continued; a fresh optimizer would say 10
    # The weights kept are the best epoch's by valid AUC.
    best = max(resumed["history"], key=lambda h: h["valid_auc"])["epoch"]
    assert resumed["best_epoch"] == best and resumed["checkpoint"] == checkpoints.at_epoch(spec.checkpoint_dir, best)


@pytest.mark.spark
def test_two_trainings_with_one_seed_end_with_the_same_weights_and_another_seed_does_not(spark, tmp_path):
    """Runs repeat: the same seed gives bit-identical weights on 2 gloo ranks (one reader
    thread per rank, rows shuffled inside row groups), so the test AUCs match to far more
    than 4 decimals; a different seed trains other weights. Also when the trainings follow
    each other in one launch (`train_each`, as the stage and the seed comparison run them):
    what an earlier training leaves in the ranks' processes changes nothing."""
    from recpipe.ranker.trainer import train_each

    # Many small row groups and three epochs: every rank's stream passes its shard several
    # times, where a reader that reshuffles by thread timing would diverge.
    spec = job(tmp_path / "a", [50] * 16, epochs=3, shuffle_queue=0)
    first = distributor().run(train, spec)
    other, again = distributor().run(train_each, [
        TrainJob(**{**spec.to_dict(), "checkpoint_dir": str(tmp_path / "other"), "seed": 4}),
        TrainJob(**{**spec.to_dict(), "checkpoint_dir": str(tmp_path / "again")}),
    ])
    assert first["checksums"][0] == again["checksums"][0] == again["checksums"][1]
    assert [h["valid_auc"] for h in first["history"]] == [h["valid_auc"] for h in again["history"]]
    assert other["checksums"][0] != first["checksums"][0]
    assert saved_checksum(again["checkpoint"]) == first["checksums"][0]  # each job kept its own checkpoints


def test_a_failed_launch_names_each_job_s_last_checkpoint_to_resume_from(tmp_path):
    from recpipe.ranker.ddp import resume_advice

    never = job(tmp_path / "b", [100, 100], name="mean")
    assert resume_advice([never]) == "No checkpoint was written; rerun from the start."
    spec = TrainJob(**{**never.to_dict(), "checkpoint_dir": str(tmp_path / "a"), "name": "attention"})
    checkpoints.save(spec.checkpoint_dir, 1, {"epoch": 1})
    last = checkpoints.save(spec.checkpoint_dir, 2, {"epoch": 2})
    assert resume_advice([spec]) == (f"Last checkpoint: {last}; rerun with --resume "
                                     "(ranker.resume=true) to continue from it.")
    assert resume_advice([spec, never]) == (f"Last checkpoints: attention: {last}, mean: none; "
                                            "rerun with --resume (ranker.resume=true) to continue from them.")


def test_early_stopping_stops_after_the_patience_and_keeps_the_best_epoch(tmp_path):
    from recpipe.ranker.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # the stopping rule alone, on a given history
    trainer.job = job(tmp_path, [64], early_stopping_patience=2)
    aucs = [0.60, 0.70, 0.69, 0.71, 0.70, 0.70]
    stops = []
    for epoch, value in enumerate(aucs, start=1):
        trainer.history = [{"epoch": e, "valid_auc": v} for e, v in enumerate(aucs[:epoch], start=1)]
        trainer.epoch = epoch
        stops.append(trainer.stalled())
    assert stops == [False, False, False, False, False, True]  # two epochs after the best (4) without a better one
    assert trainer.best_epoch() == 4
    trainer.job = TrainJob(**{**trainer.job.to_dict(), "early_stopping_patience": 0})
    assert not trainer.stalled()  # 0: every epoch is trained, the best still kept


def test_resume_with_no_checkpoint_trains_from_the_start(tmp_path):
    result = train(job(tmp_path, [100, 100], resume=True))
    assert result["steps"] == steps_per_epoch(200, 64) and result["epochs"] == 1


def test_the_same_function_runs_under_torchrun_from_the_environment(tmp_path):
    spec = job(tmp_path, [120, 120, 120])
    (tmp_path / "job.json").write_text(json.dumps(spec.to_dict()))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "recpipe.ranker.launch",
         "--job", str(tmp_path / "job.json"), "--result", str(tmp_path / "result.json")],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 6
    assert result["checksums"][0] == result["checksums"][1]


def test_per_rank_batch_must_split_the_global_batch_evenly():
    from recpipe.ranker.trainer import per_rank_batch

    assert per_rank_batch(64, 2) == 32
    with pytest.raises(ValueError, match="split evenly"):
        per_rank_batch(65, 2)
    assert torch.equal(torch.tensor(steps_per_epoch(1, 64)), torch.tensor(1))


def exchange_on_rank(rank: int, port: int, results) -> None:
    """Rank `rank` of 2 gloo processes: the object exchanges, then 200 broadcasts each
    followed by `released`; puts (rank, what came back, the largest use count seen)."""
    import torch.distributed as td
    from recpipe.ranker import dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.setup(use_gpu=False, timeout_s=60)
    try:
        gathered = dist.gather_to_main({"rank": rank, "rows": list(range(10 ** (rank + 1)))})  # unequal sizes
        broadcast = dist.broadcast_from_main({"from": rank, "note": "é" * 3})
        largest = 0
        for _ in range(200):
            tensor = torch.zeros(1000)
            td.broadcast(tensor, src=0)
            dist.released(tensor)
            largest = max(largest, tensor._use_count())
        results.put((rank, gathered, broadcast, largest))
    finally:
        dist.cleanup()


def test_object_exchanges_and_no_collective_tensor_is_left_to_the_worker_threads():
    # Without `released`, a blocking broadcast returns while gloo's worker thread still holds
    # the tensor now and then; freeing it from that thread during interpreter shutdown aborts
    # the process (seen as a rare SIGABRT at the end of torchrun runs).
    import multiprocessing

    from tests.conftest import free_port

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=exchange_on_rank, args=(r, port, results)) for r in (0, 1)]
    for process in ranks:
        process.start()
    outcomes = {}
    for _ in ranks:
        rank, gathered, broadcast, largest = results.get(timeout=120)
        outcomes[rank] = (gathered, broadcast, largest)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert outcomes[0][0] == [{"rank": 0, "rows": list(range(10))}, {"rank": 1, "rows": list(range(100))}]
    assert outcomes[1][0] is None
    assert outcomes[0][1] == outcomes[1][1] == {"from": 0, "note": "ééé"}
    assert outcomes[0][2] == outcomes[1][2] == 1
