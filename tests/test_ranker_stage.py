"""`recpipe train` end to end on generated data: generate → clean → features → ALS →
train (2 gloo ranks through TorchDistributor) → MLflow run and registered challenger.
The ALS stage's own acceptance (beats popularity, K candidates per user, registered) is
checked on the same chain's ALS run of D.

The generator plants clicks that depend on the candidate's similarity to one specific
recent item; target attention should find it better than mean pooling, and both learned
rankers should beat the ALS score and item popularity. Slow: several minutes on 2 cores.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import day_folder

pytestmark = [pytest.mark.spark, pytest.mark.generate, pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(2400)]

DATA = [
    "generate.users=3000", "generate.items=800", "generate.categories=12", "generate.days=7",
    # Clicks driven harder by the similarity to one recent item: the signal target attention is for.
    "generate.click_similarity_weight=9.0",
    "features.train_days=5", "features.min_files_per_split=4",
    "als.rank=16", "als.max_iter=10", "als.top_k=60", "als.eval_ks=[10, 50]",
    # One reader thread per rank: row groups come in the seeded order, so a rerun trains identically.
    "ranker.reader_workers=1", "ranker.progress=false", "ranker.epochs=3", "ranker.num_processes=2",
]


@pytest.fixture(scope="module")
def chain(spark, tmp_path_factory):
    """Generated days, cleaned; features of D; ALS for the first train day and for D."""
    from recpipe.als import stage as als
    from recpipe.config import load_config
    from recpipe.etl import clean, features
    from recpipe.generate import run as generate

    from tests.conftest import LOCAL_CONF

    root = tmp_path_factory.mktemp("ranker-stage") / "root"
    cfg = load_config(LOCAL_CONF, [f"paths.root={root}", *DATA])
    generate(cfg)
    dates = cfg.generate.dates
    clean.run_range(spark, cfg, dates[0], dates[-1])  # the days' events as daily cleans give them, in one job
    D = dates[-1]
    features.run(spark, cfg, D)
    # ALS for the first train day (its factors score the whole train window, leak-free)
    # and for D (the test rows), as `make run` does.
    als.run(spark, cfg, D - dt.timedelta(days=cfg.features.train_days))
    return cfg, D, als.run(spark, cfg, D)


@pytest.fixture(scope="module")
def trained(spark, chain):
    from recpipe.ranker import stage

    cfg, D, _ = chain
    return cfg, D, stage.run(spark, cfg, D)


def test_als_beats_popularity_on_recall_and_ndcg_at_50(chain):
    _, _, summary = chain
    assert summary["als_recall_at_50"] > summary["popularity_recall_at_50"], summary
    assert summary["als_ndcg_at_50"] > summary["popularity_ndcg_at_50"], summary
    assert summary["oracle_recall_at_10"] >= summary["als_recall_at_10"]  # the ceiling of re-ranking what was shown


def test_als_candidates_have_min_k_unseen_rows_per_user(spark, chain):
    from pyspark.sql import functions as F
    from recpipe import io

    cfg, D, summary = chain
    candidates = io.read_path(spark, day_folder(cfg, "als_candidates", D))
    # 800 items and a few dozen seen per user: every user has more than K unseen, so exactly K.
    fewest, most = candidates.groupBy("user_idx").count().agg(F.min("count"), F.max("count")).first()
    assert fewest == most == cfg.als.top_k
    users = io.read_path(spark, day_folder(cfg, "als_user_factors", D)).count()
    assert candidates.count() == summary["candidate_rows"] == users * cfg.als.top_k


def test_the_als_run_is_in_mlflow_and_registered(chain):
    import mlflow
    from recpipe.tracking import tracking_uri

    cfg, D, summary = chain
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name("recpipe-als")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.date = '{D}'")
    ours = [r for r in runs if r.data.metrics.get("als_recall_at_50") == pytest.approx(summary["als_recall_at_50"])
            and r.data.metrics.get("candidate_rows") == summary["candidate_rows"]]
    assert len(ours) == 1, "the ALS run of this date with these metrics is in MLflow"
    parts = ("read_interactions_s", "fit_s", "write_factors_and_top_k_s", "metrics_s", "mlflow_s")
    assert all(ours[0].data.metrics[p] == summary[p] > 0 for p in parts), "the stage's seconds per part"
    versions = client.search_model_versions("name='als-candidates'")
    assert ours[0].info.run_id in {v.run_id for v in versions}


def test_the_logged_als_model_pins_this_pyspark_and_loads_with_the_stage_s_factors(spark, chain, tmp_path):
    # Its requirements are named, not inferred by MLflow reloading the model in a process
    # with a JVM of its own (inference also finds packages the model does not import, such
    # as scipy); the model still loads and holds the factors the stage wrote.
    import mlflow
    import mlflow.spark
    import numpy
    import pyspark
    from pyspark.sql import functions as F
    from recpipe import io
    from recpipe.tracking import tracking_uri

    cfg, D, summary = chain
    local = mlflow.artifacts.download_artifacts(run_id=summary["run_id"], artifact_path="als-model",
                                                dst_path=str(tmp_path), tracking_uri=tracking_uri(cfg))
    named = (Path(local) / "requirements.txt").read_text().split()
    assert sorted(named) == sorted([f"mlflow=={mlflow.__version__}", f"pyspark=={pyspark.__version__}",
                                    f"numpy=={numpy.__version__}"])
    (als,) = mlflow.spark.load_model(local).stages  # MLflow wraps the ALSModel in a PipelineModel
    factors = als.itemFactors
    written = io.read_path(spark, day_folder(cfg, "als_item_factors", D))
    assert factors.count() == written.count() > 0
    assert factors.select(F.col("id").alias("item_idx"), "features").exceptAll(written.select("item_idx", "features")) \
        .count() == 0


def test_attention_beats_mean_pooling_and_both_beat_als_and_popularity(trained):
    _, _, summary = trained
    for metric in ("auc", "gauc"):
        attention, mean = summary[f"test_attention_{metric}"], summary[f"test_mean_{metric}"]
        baselines = max(summary[f"test_als_{metric}"], summary[f"test_popularity_{metric}"])
        assert attention > mean > baselines, summary
        assert summary[f"test_oracle_{metric}"] > attention
        # The fitted oracle (the truth's form, learned on the train rows) is a learner too:
        # above popularity, below the truth it approximates.
        fitted = summary[f"test_fitted_oracle_{metric}"]
        assert summary[f"test_popularity_{metric}"] < fitted < summary[f"test_oracle_{metric}"], summary


def test_the_run_holds_metrics_figures_inputs_and_a_challenger_version(trained):
    import mlflow
    from recpipe.tracking import tracking_uri

    cfg, D, summary = trained
    client = mlflow.MlflowClient(tracking_uri(cfg))
    run = client.get_run(summary["run_id"])
    assert run.data.tags["date"] == D.isoformat() and run.data.tags["data_digest"]
    assert len(run.data.tags["git_commit"]) in (40, len("unknown"))
    metrics = run.data.metrics
    for method in ("attention", "mean", "oracle"):
        assert {f"test_{method}_{m}" for m in ("auc", "gauc", "logloss", "calibration")} <= set(metrics)
    assert 0 < metrics["test_attention_auc_vs_oracle"] < 1
    assert metrics["test_attention_auc_vs_fitted_oracle"] == pytest.approx(
        metrics["test_attention_auc"] / metrics["test_fitted_oracle_auc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "attention_valid_auc")] == [1, 2, 3]
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/roc.png", "figures/training_curves.png", "figures/attention_heatmap.png"}
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == [f"ranker_input-{D}-train"]
    parts = ("ranker_input_s", "train_networks_s", "evaluate_s", "fitted_oracle_s", "publish_s")
    assert all(metrics[p] == summary[p] > 0 for p in parts), "the stage's seconds per part"
    assert summary["fitted_oracle_s"] < summary["evaluate_s"], "the fitted oracle is a part of evaluate"
    version = client.get_model_version_by_alias("attention-ranker", "challenger")
    assert str(version.version) == summary["version"] and version.run_id == run.info.run_id


def test_the_fitted_oracle_is_fitted_only_where_it_is_enabled(trained, monkeypatch):
    import torch

    from recpipe import splits
    from recpipe.config import load_config
    from recpipe.ranker.evaluate import fitted_oracle
    from recpipe.ranker.fitted_oracle import COLUMNS, UNBOUNDED, fitted_oracle_scores, rows_of, rows_of_split
    from recpipe.splits import iter_split, read_split, row_groups, split_location

    from tests.conftest import LOCAL_CONF

    cfg, D, _ = trained
    test = read_split(split_location(cfg, D, "test"), COLUMNS)
    reads = []
    monkeypatch.setattr(splits, "iter_split", lambda *a, **k: reads.append(k.get("last")) or iter_split(*a, **k))
    fitted = fitted_oracle(cfg, D, test)
    window = cfg.fitted_oracle.history_window
    assert reads == [window] * 2  # train and valid, a row group at a time, their window only
    assert fitted is not None and fitted.shape == test["label"].shape and ((fitted >= 0) & (fitted <= 1)).all()
    # Built a row group at a time, the train rows are those of the whole split read at once.
    train_location = split_location(cfg, D, "train")
    assert row_groups(train_location) >= 2
    pieced = rows_of_split(train_location, window)
    whole = rows_of(read_split(train_location, COLUMNS, last=window), window, UNBOUNDED)
    assert len(pieced.inputs) == len(whole.inputs)
    assert all(torch.equal(a, b) for a, b in zip(pieced.inputs, whole.inputs))
    assert np.array_equal(pieced.labels, whole.labels)
    # It reads only the last history_window positions of the histories (a fifth of the
    # train split's memory on the driver), and its scores are those of the whole width.
    full = {split: read_split(split_location(cfg, D, split), COLUMNS) for split in ("train", "valid")}
    narrow = read_split(split_location(cfg, D, "train"), COLUMNS, last=window)
    assert narrow["hist_items"].shape[1] == window < full["train"]["hist_items"].shape[1]
    for name in ("hist_items", "hist_cats", "hist_brands"):
        assert np.array_equal(narrow[name], full["train"][name][:, -window:])
    np.testing.assert_allclose(fitted, fitted_oracle_scores(full["train"], full["valid"], test, cfg.fitted_oracle),
                               rtol=0, atol=1e-6)
    off = load_config(LOCAL_CONF, [f"paths.root={cfg.paths.root}", *DATA, "fitted_oracle.enabled=false"])
    assert fitted_oracle(off, D, test) is None


def test_every_epoch_left_a_checkpoint_with_the_model_and_resolved_config(trained):
    from recpipe.ranker import checkpoints
    from recpipe.ranker.ddp import checkpoint_dir
    from recpipe.ranker.trainer import steps_per_epoch

    cfg, D, summary = trained
    for name in ("attention", "mean"):
        state = checkpoints.load(checkpoints.latest(checkpoint_dir(cfg, D, name)))
        assert state["epoch"] == 3 and state["step"] == 3 * steps_per_epoch(summary["rows"]["train"],
                                                                          cfg.ranker.batch_size)
        assert state["model_config"]["pooling"] == name
        assert state["config"]["ranker"]["epochs"] == 3


def descendants_with_rank(rank: int) -> list[int]:
    """Processes under this one whose environment makes them DDP rank `rank` (torchrun's workers)."""
    def parent(pid: str) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            ancestor = parent(pid)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = parent(str(ancestor))
        except (OSError, ValueError, IndexError):
            continue
        if ancestor == os.getpid() and f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b" ".join(environ):
            found.append(int(pid))
    return found


def test_a_rank_killed_mid_training_fails_clearly_keeps_champion_and_resume_completes(spark, trained):
    """Runs last in the module: it retrains the attention model of D (2 epochs, no base model)."""
    import mlflow
    from recpipe.config import load_config
    from recpipe.ranker import checkpoints, stage
    from recpipe.ranker.ddp import TrainingError, checkpoint_dir
    from recpipe.ranker.trainer import steps_per_epoch
    from recpipe.tracking import tracking_uri

    from tests.conftest import LOCAL_CONF

    cfg, D, summary = trained
    client = mlflow.MlflowClient(tracking_uri(cfg))
    client.set_registered_model_alias("attention-ranker", "champion", summary["version"])
    settings = [f"paths.root={cfg.paths.root}", *DATA, "ranker.compare_base_model=false", "ranker.epochs=2",
                "fitted_oracle.enabled=false"]  # its figures are checked above; here it would only cost time
    folder = checkpoint_dir(cfg, D, "attention")
    killed = []

    def kill_rank_1_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 400
        while not descendants_with_rank(1) and time.monotonic() < deadline:  # the fresh run has cleared old ones
            time.sleep(0.2)
        while checkpoints.latest(folder) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in descendants_with_rank(1):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_rank_1_after_the_first_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(TrainingError) as failure:
        stage.run(spark, load_config(LOCAL_CONF, settings), D)
    killer.join(timeout=60)
    assert killed, "no rank 1 process was found to kill"
    first = checkpoints.latest(folder)
    assert f"Last checkpoint: {first}; rerun with --resume" in str(failure.value)
    assert checkpoints.load(first)["epoch"] == 1
    assert str(client.get_model_version_by_alias("attention-ranker", "champion").version) == summary["version"]
    assert str(client.get_model_version_by_alias("attention-ranker", "challenger").version) == summary["version"]
    first_bytes = open(first, "rb").read()

    resumed = stage.run(spark, load_config(LOCAL_CONF, [*settings, "ranker.resume=true"]), D)
    final = checkpoints.load(checkpoints.latest(folder))
    assert final["epoch"] == 2 and final["step"] == resumed["attention_steps"] == 2 * steps_per_epoch(
        resumed["rows"]["train"], cfg.ranker.batch_size)
    assert open(first, "rb").read() == first_bytes  # epoch 1 was not trained again
    assert resumed["version"] != summary["version"]
    assert str(client.get_model_version_by_alias("attention-ranker", "champion").version) == summary["version"]
