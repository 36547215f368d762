"""Nightly retraining end to end on generated data, with the registry's consumers:
nightly → promote (first version against the baselines) → score; a second nightly that
does nothing; worse and better challengers; rollback; a crash in training; a backfill;
a consumer in a fresh process that cannot import recpipe. Slow: several minutes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest

from tests.conftest import day_folder

pytestmark = [pytest.mark.spark, pytest.mark.generate, pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(3000)]

DATA = [
    "generate.users=2500", "generate.items=600", "generate.categories=12", "generate.days=8",
    "features.train_days=4", "features.min_files_per_split=2",
    "als.train_days=5", "als.rank=8", "als.max_iter=4", "als.top_k=50", "als.eval_ks=[50]", "als.register_model=false",
    "ranker.reader_workers=1", "ranker.progress=false", "ranker.epochs=2", "ranker.num_processes=2",
    "ranker.compare_base_model=false", "score.top_n=10",
    # Only test_ranker_stage checks the fitted oracle; elsewhere it would only cost time.
    "fitted_oracle.enabled=false",
]
MODEL = "attention-ranker"


def file_state(root) -> dict:
    """Every file under the root except MLflow's store and the lock: name → (size, mtime)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and "mlflow" not in p.parts and not p.name.startswith("_nightly.lock")}


def delete_artifacts(client, version: str) -> None:
    """Remove a version's stored model files, as a lost or cleaned-up artifact store would."""
    location = client.get_model_version_download_uri(MODEL, version)
    shutil.rmtree(location.removeprefix("file://"))


def aliases(client) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


def register_constant_version(cfg, date: dt.date, like_version: str, zero: bool = True) -> str:
    """A version of the champion's architecture with every weight zero: one score for every
    row (AUC 0.5), registered by a run of `date` as the challenger, as train would. With
    `zero` false, a copy of `like_version` under a new version number."""
    import mlflow
    import pandas as pd
    import torch
    from recpipe.ranker.publish import log_ranker_model
    from recpipe.serving.model import build_model
    from recpipe.serving.scoring import save_weights
    from recpipe.tracking import start_run

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{like_version}"))
    weights = next(local.rglob("weights.pt"))
    vocabulary = next(local.rglob("vocabulary.npz"))
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(saved["model_config"])
    model.load_state_dict(saved["model_state"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.0 if zero else 1.0)
    save_weights(str(local / "zero.pt"), saved["model_config"], model.state_dict())
    with start_run(cfg, "recpipe-ranker", run_name=f"constant-{date}", tags={"date": date.isoformat()}):
        example = pd.DataFrame({"item_id": ["x"], "history": [["y"]]})
        return log_ranker_model(str(local / "zero.pt"), str(vocabulary), example, MODEL)["version"]


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory):
    """Run everything once; the tests below read what happened."""
    import mlflow
    from recpipe import stages
    from recpipe.config import load_config
    from recpipe.etl import clean
    from recpipe.generate import run as generate
    from recpipe.markers import read_marker, stage_state, why_rerun
    from recpipe.nightly import NightlyError, nightly
    from recpipe.pipeline import run_stages
    from recpipe.registry import promote
    from recpipe.tracking import tracking_uri

    from tests.conftest import LOCAL_CONF

    root = tmp_path_factory.mktemp("nightly") / "root"

    def config(*extra: str):
        return load_config(LOCAL_CONF, [f"paths.root={root}", *DATA, *extra])

    cfg = config()
    generate(cfg)
    days = cfg.generate.dates
    D = days[4]
    clean.run_range(spark, cfg, days[0], days[3])  # what earlier nightlies left for D to read, in one job
    client = mlflow.MlflowClient(tracking_uri(cfg))
    seen = {"D": D, "cfg": cfg, "root": root}

    printed = StringIO()
    with contextlib.redirect_stdout(printed):
        seen["first"] = nightly(cfg, [D])
    seen["first_printed"] = printed.getvalue()
    seen["after_first"] = aliases(client)
    before = file_state(root)
    seen["second"] = nightly(cfg, [D])
    seen["unchanged"] = before == file_state(root)

    # What changed since D finished decides what runs again.
    shutil.rmtree(day_folder(cfg, "recommendations", D))  # the committed files, gone
    seen["score_reason"] = why_rerun(read_marker(cfg, D, "score"), stage_state(cfg, stages.get("score"), D))
    seen["output_deleted"] = run_stages(cfg, [D], [stages.get("score")])
    seen["after_rescore"] = run_stages(cfg, [D], [stages.get("score")])
    two_days = config("evaluation.days=2", "nightly.stages=[clean, features, als]")
    seen["eval_days"] = nightly(two_days, [D])
    seen["train_after_eval_days"] = why_rerun(read_marker(two_days, D, "train"),
                                              stage_state(two_days, stages.get("train"), D))

    trained = seen["after_first"]["champion"]
    constant = register_constant_version(cfg, D, trained)
    seen["worse"] = promote.run(spark, cfg, D)
    seen["after_worse"] = aliases(client)
    seen["constant_tags"] = client.get_model_version(MODEL, constant).tags

    # An old, weak champion (the constant version) and the trained version challenging it.
    client.set_registered_model_alias(MODEL, "champion", constant)
    client.set_registered_model_alias(MODEL, "challenger", trained)
    seen["better"] = promote.run(spark, cfg, D)
    seen["after_better"] = aliases(client)
    seen["rollback"] = promote.rollback(cfg)
    seen["after_rollback"] = aliases(client)
    seen["trained_tags"] = client.get_model_version(MODEL, trained).tags
    seen["rerun_after_rollback"] = nightly(config("nightly.stages=[promote]"), [D], force=True)
    seen["after_rerun_after_rollback"] = aliases(client)

    copy = register_constant_version(cfg, D, trained, zero=False)  # as good as trained, and not rolled back
    delete_artifacts(client, aliases(client)["champion"])  # the constant version can no longer be loaded
    seen["champion_broken"] = promote.run(spark, cfg, D)
    seen["after_champion_broken"] = aliases(client)
    seen["copy_tags"] = client.get_model_version(MODEL, copy).tags

    client.set_registered_model_alias(MODEL, "champion", trained)
    # not divisible by 2 ranks; D's features and ALS were last built with evaluation.days=2: left as they are
    broken = config("ranker.batch_size=1001", "nightly.stages=[train, promote, score]")
    with pytest.raises(NightlyError) as crash:
        nightly(broken, [D], from_stage="train")
    seen["crash"] = (str(crash.value), crash.value.outcomes)
    seen["after_crash"] = aliases(client)

    versions_before = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    one_epoch = config("ranker.epochs=1")  # the backfill checks order and registration, not quality
    # Two days show the order and that no day's gate moves the champion; each day more is a whole nightly.
    seen["backfill"] = nightly(one_epoch, days[5:7], promote_last_only=True)
    seen["backfill_versions"] = {v.version for v in client.search_model_versions(f"name='{MODEL}'")} - versions_before
    seen["after_backfill"] = aliases(client)
    return seen


def statuses(outcomes, date=None) -> dict[str, str]:
    return {o.stage: o.status for o in outcomes if date is None or o.date == date}


def test_first_nightly_runs_every_stage_and_promotes_a_version_that_beats_the_baselines(scenario):
    assert statuses(scenario["first"]) == {s: "ok" for s in ("clean", "quality", "features", "als", "train", "promote",
                                                                   "score")}
    promote = next(o for o in scenario["first"] if o.stage == "promote")
    assert promote.note.startswith("promoted")
    assert scenario["after_first"]["champion"] == scenario["after_first"]["challenger"]


def test_the_nightly_prints_the_ranker_als_and_gate_measures_and_the_run_ids_behind_them(scenario):
    import mlflow
    from recpipe.tracking import tracking_uri

    D, printed = scenario["D"], scenario["first_printed"]
    results = printed[printed.index(f"results for {D}:"):]
    summary = {o.stage: o.summary for o in scenario["first"]}
    als, train, promote = summary["als"], summary["train"], summary["promote"]
    client = mlflow.MlflowClient(tracking_uri(scenario["cfg"]))
    assert client.get_run(als["run_id"]).data.metrics["als_recall_at_50"] == pytest.approx(als["als_recall_at_50"])
    assert f"Recall@50 {als['als_recall_at_50']:.4f} (popularity {als['popularity_recall_at_50']:.4f}), " \
           f"run {als['run_id']}" in results
    logged = client.get_run(train["run_id"]).data.metrics
    assert logged["test_attention_auc"] == pytest.approx(train["test_attention_auc"], abs=1e-4)
    assert f"attention test AUC {train['test_attention_auc']:.4f} gAUC {train['test_attention_gauc']:.4f}; " \
           f"run {train['run_id']}, registered version {train['version']}" in results
    assert f"promoted: challenger {train['version']} (AUC {promote['challenger_auc']:.4f}, " \
           f"gAUC {promote['challenger_gauc']:.4f})" in results and f"champion now {train['version']}" in results
    nightly_runs = client.search_runs([client.get_experiment_by_name("recpipe-nightly").experiment_id],
                                      f"attributes.run_name = 'nightly-{D}'", order_by=["attributes.start_time ASC"])
    assert f"nightly  run {nightly_runs[0].info.run_id}" in results
    assert results.index("als") < results.index("train") < results.index("promote") < results.index("nightly")


def test_the_nightly_records_each_stages_seconds_in_mlflow(scenario):
    import mlflow
    from recpipe.tracking import tracking_uri

    cfg, D = scenario["cfg"], scenario["D"]
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name("recpipe-nightly")
    first = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'nightly-{D}'",
                               order_by=["attributes.start_time ASC"])[0]
    expected = {f"{o.stage}_seconds": round(o.seconds, 3) for o in scenario["first"]}
    assert {k: v for k, v in first.data.metrics.items() if k != "total_seconds"} == pytest.approx(expected)
    assert first.data.metrics["total_seconds"] == pytest.approx(sum(expected.values()), abs=0.01)
    assert first.data.tags["score"] == "ok" and first.data.tags["date"] == D.isoformat()
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'nightly-{D}'")
    # first, eval_days, the broken train (a failed nightly logs too), the forced promote;
    # the second nightly, which skipped everything, logs none.
    assert len(runs) == 4
    failed = [r for r in runs if r.data.tags.get("train") == "failed"]
    assert len(failed) == 1 and set(failed[0].data.metrics) == {"train_seconds", "total_seconds"}


def test_second_nightly_for_the_same_date_does_no_work_and_changes_no_output(scenario):
    assert set(statuses(scenario["second"]).values()) == {"skipped"}
    assert scenario["unchanged"]


def test_a_deleted_output_reruns_its_stage_once(scenario):
    assert scenario["score_reason"] == f"output changed: recommendations/dt={scenario['D']}"
    assert statuses(scenario["output_deleted"]) == {"score": "ok"}
    assert statuses(scenario["after_rescore"]) == {"score": "skipped"}


def test_a_changed_evaluation_days_reruns_features_and_als_and_what_reads_them(scenario):
    assert statuses(scenario["eval_days"]) == {"clean": "skipped", "features": "ok", "als": "ok"}
    assert scenario["train_after_eval_days"].startswith("input changed: ") and "samples/dt=" in \
        scenario["train_after_eval_days"]


def test_a_worse_challenger_is_not_promoted_and_is_tagged_so(scenario):
    assert scenario["worse"]["decision"] == "rejected"
    assert scenario["after_worse"]["champion"] == scenario["after_first"]["champion"]
    tags = scenario["constant_tags"]
    assert tags["validation_status"] == "rejected" and tags["validation_date"] == scenario["D"].isoformat()
    assert float(tags["challenger_auc"]) == pytest.approx(0.5)
    assert float(tags["champion_gauc"]) > float(tags["challenger_gauc"])


def test_a_better_challenger_is_promoted_and_the_replaced_version_kept_as_previous(scenario):
    assert scenario["better"]["decision"] == "promoted"
    after = scenario["after_better"]
    assert after["champion"] == scenario["after_first"]["champion"]
    assert after["previous"] == scenario["after_worse"]["challenger"]  # the constant version


def test_rollback_moves_champion_back_to_previous(scenario):
    after = scenario["after_rollback"]
    assert after["champion"] == scenario["after_better"]["previous"] and "previous" not in after
    assert scenario["trained_tags"]["validation_status"] == "rolled_back"


def test_a_nightly_rerun_after_a_rollback_does_not_promote_the_rolled_back_version(scenario):
    assert statuses(scenario["rerun_after_rollback"]) == {"promote": "ok"}
    assert scenario["after_rerun_after_rollback"]["champion"] == scenario["after_rollback"]["champion"]
    assert scenario["after_rerun_after_rollback"]["challenger"] == scenario["after_first"]["champion"]


def test_a_champion_that_cannot_be_loaded_means_no_promotion_and_the_reason_is_tagged(scenario):
    assert scenario["champion_broken"]["decision"] == "rejected"
    assert scenario["after_champion_broken"]["champion"] == scenario["after_rollback"]["champion"]
    tags = scenario["copy_tags"]
    assert tags["validation_status"] == "rejected"
    assert "champion's scores are incomplete" in tags["validation_reason"]
    assert "champion version could not be loaded or scored" in tags["validation_reason"]
    assert float(tags["challenger_gauc"]) > float(tags["baseline_popularity_gauc"])  # it would have won otherwise


def test_a_crash_in_training_leaves_champion_where_it_was_and_names_the_stage(scenario):
    message, outcomes = scenario["crash"]
    assert "stage train failed" in message and "batch_size" in message

    assert statuses(outcomes)["train"] == "failed" and statuses(outcomes)["promote"] == "not run"
    assert scenario["after_crash"]["champion"] == scenario["after_first"]["champion"]


def test_a_backfill_writes_each_date_registers_a_version_for_each_and_moves_no_champion(scenario):
    days = scenario["cfg"].generate.dates[5:7]
    for day in days:
        assert statuses(scenario["backfill"], day)["promote"] == "skipped"
        assert statuses(scenario["backfill"], day)["score"] == "ok"
        assert Path(day_folder(scenario["cfg"], "recommendations", day)).is_dir()
    assert [o.date for o in scenario["backfill"] if o.stage == "clean"] == days  # in date order
    assert len(scenario["backfill_versions"]) == len(days)
    assert scenario["after_backfill"]["champion"] == scenario["after_crash"]["champion"]


def test_recommendations_have_top_n_per_user_no_history_items_and_the_champion_version(spark, scenario):
    from pyspark.sql import functions as F
    from recpipe import io

    cfg, D = scenario["cfg"], scenario["D"]
    recs = io.read_day(spark, cfg, "recommendations", D)
    per_user = recs.groupBy("user_idx").agg(F.count("*").alias("n"), F.max("rank").alias("last"))
    assert per_user.where(F.col("n") != F.col("last")).count() == 0
    assert per_user.agg(F.max("n")).first()[0] == cfg.score.top_n
    assert per_user.where(F.col("n") < cfg.score.top_n).count() < 0.05 * per_user.count()  # users short of candidates
    assert {r[0] for r in recs.select("model_version").distinct().collect()} == {scenario["after_first"]["champion"]}
    history = io.read_day(spark, cfg, "sequences", D).select("user_idx", F.explode("hist_items").alias("item_idx"))
    assert recs.join(history, ["user_idx", "item_idx"]).count() == 0
    users_with_candidates = io.read_path(spark, day_folder(cfg, 'als_candidates', D)).select("user_idx").distinct()
    assert per_user.count() == users_with_candidates.count()


def test_recommend_explains_one_users_list_with_history_items(spark, scenario):
    from recpipe import io
    from recpipe.registry.recommend import recommend

    cfg, D = scenario["cfg"], scenario["D"]
    user = io.read_day(spark, cfg, "recommendations", D).orderBy("user_idx").first()["user_id"]
    listed = recommend(spark, cfg, user, D)
    assert list(listed["rank"]) == list(range(1, cfg.score.top_n + 1))
    assert listed["score"].is_monotonic_decreasing
    assert any("(" in because for because in listed["because"])


def test_a_fresh_process_without_recpipe_loads_the_champion_and_scores(scenario, tmp_path):
    from recpipe.tracking import tracking_uri

    from tests.conftest import RECPIPE_NOT_LOADED, WITHOUT_RECPIPE

    cfg = scenario["cfg"]
    script = WITHOUT_RECPIPE + textwrap.dedent(f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({tracking_uri(cfg)!r})
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        frame = pd.DataFrame({{"item_id": ["i00001", "never-seen-item"], "history": [["i00002", "i00003"], []]}})
        scores = model.predict(frame)
    """) + RECPIPE_NOT_LOADED + "print(json.dumps(scores.tolist()))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)


def test_the_score_stage_gives_the_consumer_pyfuncs_scores(spark, scenario):
    """`recpipe score` scores by index inside Spark; the registered pyfunc, given the same
    rows as a consumer sends them (string ids), gives the same scores."""
    import mlflow
    from pyspark.sql import functions as F
    from recpipe import io
    from recpipe.registry.score import candidate_rows, model_input
    from recpipe.tracking import tracking_uri

    cfg, D = scenario["cfg"], scenario["D"]
    recs = io.read_day(spark, cfg, "recommendations", D)
    users = [r["user_id"] for r in recs.select("user_id").distinct().orderBy("user_id").limit(3).collect()]
    listed = recs.where(F.col("user_id").isin(users)).select("user_id", "item_id", "score", "model_version").toPandas()
    rows = (candidate_rows(spark, cfg, D, exclude_history=True, user_ids=users).toPandas()
            .merge(listed, on=["user_id", "item_id"]))
    assert len(rows) == len(listed) > 0
    mlflow.set_tracking_uri(tracking_uri(cfg))
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{listed['model_version'].iloc[0]}")
    consumer = model.predict(model_input(rows)).to_numpy()
    assert consumer == pytest.approx(rows["score"].to_numpy(), abs=1e-6)


def test_score_gathers_each_users_candidates_in_tasks_of_a_bounded_share(spark, scenario):
    """Each user's candidates are gathered into one row (a sort of the task's whole share)
    by tasks holding about `spark.list_rows_per_task` candidates each, however few files
    hold them (two read tasks at 1 M lines a day ran a 4g heap out); none is lost."""
    import dataclasses

    from pyspark.sql import functions as F
    from recpipe import io
    from recpipe.errors import ConfigError
    from recpipe.registry.score import CANDIDATES, user_rows

    cfg, D = scenario["cfg"], scenario["D"]
    candidates = io.read_path(spark, io.location(cfg, "als_candidates", D))
    everyone = candidates.count()
    per_task = everyone // 50  # without the bound: the test session's 4 shuffle partitions, everyone / 4 each
    bounded = dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, list_rows_per_task=per_task))
    users = user_rows(spark, bounded, D, exclude_history=False)
    shares = (users.groupBy(F.spark_partition_id().alias("task")).agg(F.sum(F.size(CANDIDATES)).alias("candidates"))
              .toPandas()["candidates"])
    assert shares.sum() == everyone and users.count() == candidates.select("user_idx").distinct().count()
    assert shares.max() <= 2 * per_task

    never = dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, list_rows_per_task=0))
    with pytest.raises(ConfigError, match="spark.list_rows_per_task"):
        user_rows(spark, never, D, exclude_history=False)


def test_the_gate_scores_every_row_as_the_pyfunc_does_and_checks_its_first_rows_against_the_signature(
        spark, scenario):
    """promote scores all of D's test rows without MLflow's per-row signature check and the
    first `promote.checked_rows` with it; rows there that the signature refuses fail the
    version, though the scorer alone would have scored them (integer ids are unknown ids)."""
    import mlflow
    import numpy as np
    from recpipe.registry import promote
    from recpipe.serving.consumer import consumer_frame
    from recpipe.tracking import tracking_uri

    cfg, D = scenario["cfg"], scenario["D"]
    arrays, names = promote.gate_rows(spark, cfg, D)
    frame = consumer_frame(arrays, names)
    version = scenario["after_first"]["champion"]
    mlflow.set_tracking_uri(tracking_uri(cfg))
    errors: dict[str, str] = {}
    # The gate builds and scores its rows a frame of at most promote.rows_per_frame at a time.
    frames = list(promote.gate_frames(arrays, names, 40))
    assert len(frames) > 1 and all(len(f) <= 40 for f in frames)
    # Each frame is built once and scored by every version.
    gate = promote.predict({"challenger": version, "champion": version}, iter(frames), len(frame), errors,
                           checked_rows=20)
    assert not errors and len(gate["challenger"]) == len(frame) > 40
    consumer = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}").predict(frame).to_numpy()
    assert gate["challenger"] == pytest.approx(consumer, abs=1e-6)
    assert gate["champion"] == pytest.approx(consumer, abs=1e-6)

    refused = frame.copy()
    refused.at[refused.index[5], "history"] = [1, 2]  # Array(string) in the signature
    scores = promote.predict({"challenger": version}, [refused], len(frame), errors, checked_rows=5)
    assert np.isfinite(scores["challenger"]).all() and not errors
    scores = promote.predict({"challenger": version}, [refused], len(frame), errors, checked_rows=20)
    assert np.isnan(scores["challenger"]).all() and "challenger" in errors
    assert "schema" in errors["challenger"].lower()


def test_the_notebooks_run_top_to_bottom_on_a_nightly_root_and_draw(scenario, monkeypatch):
    """The three notebooks on the nightly's outputs for D (not a whole-history cut-off): the
    generator's manifest stands in for the ingest report, and only attention was trained."""
    import nbformat
    from nbclient import NotebookClient

    from tests.conftest import LOCAL_CONF, REPO

    D = scenario["D"]
    monkeypatch.setenv("RECPIPE_CONF", str(LOCAL_CONF))
    monkeypatch.setenv("RECPIPE_SET", " ".join([f"paths.root={scenario['root']}", *DATA]))  # K of the ALS run
    monkeypatch.setenv("RECPIPE_DATE", D.isoformat())  # the backfill left later days: D is named, not found
    for name in ("01_data_quality", "02_candidates", "03_attention_ranker"):
        notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        where = {"metadata": {"path": str(REPO)}}  # the kernel starts in the repository root
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources=where).execute()
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
        assert not [o for o in outputs if o.get("output_type") == "error"], name
        assert f"| D: {D}" in "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"), name
        images = sum("image/png" in o.get("data", {}) for o in outputs)
        assert images >= 3, f"{name} drew {images} figures"
