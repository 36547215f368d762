"""The multi-seed comparison's arithmetic (mean ± std, the paired difference's interval,
the verdict on the noise) and the held-out-user split it runs on in `make report`."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_ranker_inputs import D, SAMPLES_SCHEMA, day, sample_rows


def comparison(attention_aucs, mean_aucs, **extra):
    runs = {"attention": [{"auc": a, "gauc": a - 0.01} for a in attention_aucs],
            "mean": [{"auc": m, "gauc": m - 0.01} for m in mean_aucs]}
    return {"runs": runs, "fixed": {"als": {"auc": 0.6, "gauc": 0.55}}, **extra}


def test_interval_is_the_t_interval_of_the_mean():
    from recpipe.ranker.quality import interval

    mean, std, low, high = interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert (low, high) == pytest.approx((2.0 - 4.302653 / 3 ** 0.5, 2.0 + 4.302653 / 3 ** 0.5), abs=1e-5)
    assert interval([0.7]) == (0.7, 0.0, 0.7, 0.7)


def test_the_difference_is_paired_seed_by_seed():
    from recpipe.ranker.quality import figures

    # The seeds move both networks together; the paired difference is a constant 0.02.
    values = figures(comparison([0.70, 0.75, 0.80], [0.68, 0.73, 0.78]))
    assert values["attention_auc"] == pytest.approx(0.75) and values["attention_auc_std"] == pytest.approx(0.05)
    assert values["diff"] == pytest.approx(0.02)
    assert values["diff_low"] == pytest.approx(0.02) and values["diff_high"] == pytest.approx(0.02)
    assert values["gauc_diff"] == pytest.approx(0.02)
    assert values["als_gauc"] == 0.55
    assert "vs_oracle" not in values  # real data: no oracle
    with_oracle = comparison([0.70, 0.80], [0.70, 0.70], repeat={"auc": 0.7001})
    with_oracle["fixed"]["oracle"] = {"auc": 0.9, "gauc": 0.9}
    values = figures(with_oracle)
    assert values["vs_oracle"] == pytest.approx(0.75 / 0.9)
    assert values["repeat_auc_diff"] == pytest.approx(0.0001)


@pytest.mark.parametrize("attention, mean, verdict", [
    ([0.70, 0.75, 0.80], [0.68, 0.73, 0.78],
     "on AUC: +0.0200, 95 % interval [+0.0200, +0.0200]: attention leads, outside the noise"),
    ([0.70, 0.75, 0.80], [0.72, 0.77, 0.82], "mean pooling leads, outside the noise"),
    ([0.70, 0.75, 0.80], [0.71, 0.73, 0.81], "inside the noise (the interval holds 0), so neither network leads"),
])
def test_the_report_says_whether_the_lead_is_inside_the_noise(attention, mean, verdict):
    from recpipe.ranker.quality import figures, lead_in_words

    assert verdict in lead_in_words(figures(comparison(attention, mean)), "auc")


def test_held_out_users_evaluate_every_row_of_theirs_and_the_run_s_own_samples_stay(spark, make_config):
    from pyspark.sql import functions as F
    from recpipe import io, tables
    from recpipe.errors import ConfigError
    from recpipe.etl import samples as S
    from recpipe.etl.sequences import day_start_ms
    from recpipe.ranker.quality import holdout_config, write_holdout_samples

    cfg = make_config("history.holdout_share=0.4", "history.holdout_valid_share=0.25")
    rng = np.random.default_rng(1)
    rows = sample_rows(rng, 300, "train", [day(3), day(2), day(1)]) + sample_rows(rng, 100, "test", [D])
    rows = [(r[0], i % 60 + 1, *r[2:]) for i, r in enumerate(rows)]  # 60 users, each before and after D
    samples = spark.createDataFrame(rows, SAMPLES_SCHEMA).withColumn("dt", F.lit(D))
    meta = {"eval_split": "user_hash", "valid_share": 0.5, "holdout_share": 0.0, "negative_sampling_rate": 1.0,
            "user_dense_features": ["u0", "u1"], "item_dense_features": ["i0", "i1", "i2"]}
    with tables.committing(cfg, "features"):
        S.write_samples(samples, cfg, D, {"train": 300, "test": 100}, min_files=2, max_records_per_file=1000,
                        row_group_mb=1)
        S.write_meta(cfg, D, meta)

    holdout = holdout_config(cfg)
    rows_per_split = write_holdout_samples(spark, cfg, holdout, D)

    split_of = {r["event_id"]: r["split"] for r in io.read_day(spark, holdout, "samples", D).collect()}
    assert sorted(split_of) == sorted(r[0] for r in rows)  # every sample, once
    assert rows_per_split == {s: list(split_of.values()).count(s) for s in ("train", "valid", "test")}
    splits_of_user: dict[int, set] = {}
    for event_id, user, ts in ((r[0], r[1], r[10]) for r in rows):
        splits_of_user.setdefault(user, set()).add(split_of[event_id])
    held = {u for u, s in splits_of_user.items() if "train" not in s}
    assert all(s in ({"train"}, {"valid"}, {"test"}) for s in splits_of_user.values())  # a user's rows stay together
    assert 0.2 < len(held) / len(splits_of_user) < 0.6  # about holdout_share
    assert any(ts < day_start_ms(D) for _, user, ts in ((r[0], r[1], r[10]) for r in rows) if user in held)
    new_meta = S.read_meta(holdout, D)
    assert (new_meta["eval_split"], new_meta["holdout_share"], new_meta["valid_share"]) == ("user_holdout", 0.4, 0.25)
    assert new_meta["rows"] == rows_per_split and new_meta["user_dense_features"] == ["u0", "u1"]
    # The run's own samples, meta and split, are as they were.
    assert S.read_meta(cfg, D) == meta
    assert {r["split"] for r in io.read_day(spark, cfg, "samples", D).collect()} == {"train", "test"}
    assert holdout.table_path("samples") != cfg.table_path("samples")
    with pytest.raises(ConfigError, match="history.holdout_share"):
        holdout_config(make_config("history.holdout_share=0"))
    with tables.committing(cfg, "features"):  # train negatives thinned: a new split would thin valid/test too
        S.write_meta(cfg, D, {**meta, "negative_sampling_rate": 0.5})
    with pytest.raises(ConfigError, match="negative_sampling_rate"):
        write_holdout_samples(spark, cfg, holdout, D)
