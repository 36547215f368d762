"""The whole-history run on the real ml-latest-small, as `make report` does it: ingest,
`recpipe history` with conf/movielens.yaml, the Markdown report (with its comparison of
the two networks over seeds, on the run's split and on held-out users), and the three
notebooks executed top to bottom on those outputs.

`make report` trains each network with 5 seeds per split; here 2 (`history.report_seeds`)
keep the suite's time down and still give each comparison a spread and an interval.

One run for the module (the slowest fixture of the suite); every test reads it.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from recpipe.config import load_config

from tests.conftest import REPO, movielens_zip

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.ddp, pytest.mark.timeout(2400)]

CONF = REPO / "conf" / "movielens.yaml"
NOTEBOOKS = ("01_data_quality", "02_candidates", "03_attention_ranker")
SEEDS = 2


@pytest.fixture(scope="module")
def movielens(spark, tmp_path_factory):
    from recpipe import history
    from recpipe.ingest.movielens import ingest
    from recpipe.report import write_results

    source = movielens_zip()  # before the session's settings change: a skip leaves them as they are
    root = tmp_path_factory.mktemp("movielens") / "root"
    overrides = [f"paths.root={root}", "ranker.progress=false", f"history.report_seeds={SEEDS}"]
    cfg = load_config(CONF, overrides)
    # The profile's Spark settings for thousands of day folders, on the shared session for
    # this module only (they are runtime SQL settings).
    previous = {key: spark.conf.get(key, None) for key in cfg.spark.extra}
    for key, value in cfg.spark.extra.items():
        spark.conf.set(key, str(value))
    try:
        ingest(cfg, str(source))
        results = history.run(cfg)
        output = root.parent / "results.md"
        write_results(spark, cfg, None, str(output))
    finally:
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)
    return cfg, overrides, results, output


def latest_metrics(cfg, experiment: str) -> dict[str, float]:
    from recpipe.report import run_metrics

    return run_metrics(cfg, experiment, dt.date.fromisoformat(cfg.history.cutoff))


def test_history_splits_every_rating_in_time_at_the_cut_off(movielens):
    from recpipe.etl.samples import read_meta
    from recpipe.splits import split_location

    cfg, _, results, _ = movielens
    cutoff = dt.date.fromisoformat(cfg.history.cutoff)
    assert [(r.stage, r.status) for r in results] == [("clean", "ok"), ("clean", "ok"), ("features", "ok"),
                                                      ("als", "ok"), ("train", "ok")]
    assert sum(r.summary["accepted"] for r in results[:2]) == 100_836 + 48_580  # impressions and clicks
    assert sum(r.summary["rejected"] for r in results[:2]) == 0
    meta = read_meta(cfg, cutoff)
    assert sum(meta["rows"].values()) == 100_836  # one sample per rating
    assert sum(meta["positives"].values()) == 48_580
    cutoff_ms = int(dt.datetime.combine(cutoff, dt.time(), tzinfo=dt.timezone.utc).timestamp() * 1000)
    for split, before in (("train", True), ("valid", False), ("test", False)):
        ts = pd.read_parquet(split_location(cfg, cutoff, split), columns=["ts_ms"])["ts_ms"].to_numpy()
        assert len(ts) and bool(np.all(ts < cutoff_ms) if before else np.all(ts >= cutoff_ms)), split


def test_als_beats_popularity_on_recall_at_50(movielens):
    from recpipe.names import ALS_EXPERIMENT as EXPERIMENT

    cfg, _, _, _ = movielens
    als = latest_metrics(cfg, EXPERIMENT)
    assert als["eval_users"] >= 10
    assert als["als_recall_at_50"] > als["popularity_recall_at_50"]


def test_both_networks_rank_each_user_s_films_better_than_the_als_score_and_popularity(movielens):
    # The issue also asks attention >= mean pooling on gAUC; on this data it does not hold
    # reliably (docs/results.md lists the runs), so it is not asserted here.
    from recpipe.names import RANKER_EXPERIMENT as EXPERIMENT

    cfg, _, _, _ = movielens
    ranker = latest_metrics(cfg, EXPERIMENT)
    for network in ("attention", "mean"):
        for baseline in ("als", "popularity"):
            assert ranker[f"test_{network}_gauc"] > ranker[f"test_{baseline}_gauc"], (network, baseline)


def seed_runs(cfg) -> dict:
    import mlflow
    from recpipe.names import QUALITY_EXPERIMENT
    from recpipe.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(QUALITY_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.date = '{cfg.history.cutoff}'")
    return {run.data.tags["eval_split"]: run for run in runs}


def test_over_seeds_on_both_splits_both_networks_rank_better_than_the_als_score_and_popularity(movielens):
    # What this data supports. Attention against mean pooling is reported with its
    # interval, not asserted: on these rows the two are within each other's noise.
    cfg, _, _, _ = movielens
    runs = seed_runs(cfg)
    assert sorted(runs) == ["user_hash", "user_holdout"]
    for split, run in runs.items():
        metrics = run.data.metrics
        assert run.data.params["seeds"] == ",".join(str(cfg.ranker.seed + k) for k in range(SEEDS))
        for network in ("attention", "mean"):
            assert metrics[f"{network}_gauc_std"] > 0, (split, network)  # the seeds trained different networks
            for baseline in ("als", "popularity"):
                assert metrics[f"{network}_gauc"] > metrics[f"{baseline}_gauc"], (split, network, baseline)
        assert metrics["gauc_diff_low"] <= metrics["gauc_diff"] <= metrics["gauc_diff_high"]


def test_report_gives_each_split_s_seed_comparison_and_says_whether_the_lead_is_noise(movielens):
    from recpipe.ranker.quality import lead_in_words

    cfg, _, _, output = movielens
    text = output.read_text()
    assert f"## The two networks over {SEEDS} seeds" in text
    for split, run in seed_runs(cfg).items():
        section = text.split(f"Run `{run.info.run_id}`.", 1)[1].split("###", 1)[0]
        m = run.data.metrics
        attention = next(line for line in section.splitlines() if line.startswith("| attention"))
        assert f"{m['attention_auc']:.4f} ± {m['attention_auc_std']:.4f} | " \
               f"{m['attention_gauc']:.4f} ± {m['attention_gauc_std']:.4f}" in attention, split
        assert lead_in_words(m, "gauc") in section and lead_in_words(m, "auc") in section, split
    assert "holds out 40% of the users" in text.split("Held-out users", 1)[1]


def test_report_tables_carry_the_run_s_figures(movielens):
    from recpipe.names import ALS_EXPERIMENT as ALS
    from recpipe.names import RANKER_EXPERIMENT as RANKER

    cfg, _, _, output = movielens
    text = output.read_text()
    als, ranker = latest_metrics(cfg, ALS), latest_metrics(cfg, RANKER)
    assert "100,836 ratings by 610 users" in text and "9,742 movies in the catalogue" in text
    als_row = next(line for line in text.splitlines() if line.startswith("| ALS |"))
    assert f"{als['als_recall_at_10']:.4f} | {als['als_ndcg_at_10']:.4f} | {als['als_map_at_10']:.4f}" in als_row
    attention_row = next(line for line in text.splitlines() if line.startswith("| attention"))
    assert f"{ranker['test_attention_auc']:.4f} | {ranker['test_attention_gauc']:.4f}" in attention_row
    for method in ("ALS score", "item popularity"):  # Platt-scaled logloss, a number, not n/a
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert 0.0 < float(row.rstrip(" |").rsplit("|", 1)[1]) < 1.0, row
    assert "Per-user leave-last-out" in text and "0.7348" in text  # the variant and the DIN reference


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_and_draws(movielens, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    _, overrides, _, _ = movielens
    monkeypatch.setenv("RECPIPE_CONF", str(CONF))
    monkeypatch.setenv("RECPIPE_SET", " ".join(overrides))
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stripped in git
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 3, f"{name} drew {len(images)} figures"
    assert not [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
