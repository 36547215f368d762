"""ALS on generated data, through the real chain: generate -> clean every day -> als for D."""

from __future__ import annotations

import pytest

from recpipe.als import stage as als_stage
from recpipe.etl import clean
from recpipe.generate import run as generate
from recpipe import io, paths

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SMALL = ["generate.users=3000", "generate.items=2000", "generate.days=6", "generate.daily_active_share=0.5",
         "als.train_days=5", "als.rank=16", "als.max_iter=8", "als.top_k=60", "als.eval_ks=[10, 50]",
         "als.register_model=true"]


@pytest.fixture(scope="module")
def als_run(spark, tmp_path_factory):
    from recpipe.config import load_config
    from tests.conftest import LOCAL_CONF

    cfg = load_config(LOCAL_CONF, [f"paths.root={tmp_path_factory.mktemp('als-chain')}", *SMALL])
    generate(cfg)
    for day in cfg.generate.dates:
        clean.run(spark, cfg, day)
    day = cfg.generate.dates[-1]
    return cfg, day, als_stage.run(spark, cfg, day)


def test_als_beats_popularity_on_recall_and_ndcg_at_50(als_run):
    _, _, summary = als_run
    assert summary["als_recall_at_50"] > summary["popularity_recall_at_50"]
    assert summary["als_ndcg_at_50"] > summary["popularity_ndcg_at_50"]
    assert summary["oracle_recall_at_10"] >= summary["als_recall_at_10"]  # the ceiling of re-ranking what was shown


def test_candidates_have_min_k_unseen_rows_per_user(spark, als_run):
    cfg, day, summary = als_run
    candidates = io.read_path(spark, paths.join_uri(cfg.table_path("als", day), "candidates"))
    per_user = candidates.groupBy("user_idx").count()
    assert per_user.agg({"count": "max"}).first()[0] == cfg.als.top_k
    assert candidates.count() == summary["candidate_rows"]


def test_the_run_is_in_mlflow_and_registered(als_run):
    import mlflow

    from recpipe.tracking import tracking_uri

    cfg, day, summary = als_run
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name("recpipe-als")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.date = '{day}'")
    ours = [r for r in runs if r.data.metrics.get("als_recall_at_50") == pytest.approx(summary["als_recall_at_50"])
            and r.data.metrics.get("candidate_rows") == summary["candidate_rows"]]
    assert len(ours) == 1, "the ALS run of this date with these metrics is in MLflow"
    versions = client.search_model_versions("name='als-candidates'")
    assert ours[0].info.run_id in {v.run_id for v in versions}
