"""The whole-history run's parts on tiny inputs: the windows it sets, its cut-off checks,
the evaluation days of the samples and of ALS, and the report's leave-last-out split and
Platt-scaled logloss."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from recpipe import history, io
from recpipe.errors import ConfigError, DataError
from recpipe.etl.samples import TEST, TRAIN, VALID, assign_splits
from recpipe.etl.sequences import DAY_MS, day_start_ms

D = dt.date(2016, 1, 1)


def make_raw_days(cfg, days) -> None:
    for day in days:
        folder = Path(cfg.table_path("raw_events", day))
        folder.mkdir(parents=True)
        (folder / "part-00000.json").write_text("{}\n")


def test_whole_history_config_trains_on_every_day_before_the_cut_off_and_evaluates_the_rest(make_config):
    cfg = make_config()
    stretched = history.whole_history_config(cfg, D, dt.date(2015, 12, 1), dt.date(2016, 1, 10))
    assert stretched.features.train_days == 31 and stretched.als.train_days == 31
    assert stretched.evaluation.days == 10  # 1 January to 10 January, both included
    assert stretched.features.lookback_days == 41
    assert stretched.features.history_length == cfg.features.history_length  # nothing else changes
    assert cfg.evaluation.days == 1  # and the nightly's own config is untouched


def test_cut_off_comes_from_the_command_line_or_the_config(make_config):
    assert history.cutoff_date(make_config("history.cutoff=2016-01-01"), None) == D
    assert history.cutoff_date(make_config("history.cutoff=2016-01-01"), dt.date(2017, 1, 1)) == dt.date(2017, 1, 1)
    with pytest.raises(ConfigError, match="no cut-off"):
        history.cutoff_date(make_config(), None)
    with pytest.raises(ConfigError, match="history.cutoff: '2016-13-01' is not a date"):
        history.cutoff_date(make_config("history.cutoff=2016-13-01"), None)


def test_cut_off_must_leave_days_on_both_sides(make_config):
    cfg = make_config()
    with pytest.raises(DataError, match="no raw events"):
        history.data_span(cfg, D)
    make_raw_days(cfg, [dt.date(2015, 12, 30), D, dt.date(2016, 1, 5)])
    assert history.data_span(cfg, D) == (dt.date(2015, 12, 30), dt.date(2016, 1, 5))
    for bad in (dt.date(2015, 12, 30), dt.date(2016, 1, 6)):
        with pytest.raises(DataError, match=f"cut-off {bad} must lie after the first day 2015-12-30"):
            history.data_span(cfg, bad)


def test_newest_on_or_before_bisects_sorted_days():
    days = [dt.date(2016, 1, 1), dt.date(2016, 1, 5)]
    assert io.newest_on_or_before(days, dt.date(2015, 12, 31)) is None
    assert io.newest_on_or_before(days, dt.date(2016, 1, 1)) == dt.date(2016, 1, 1)
    assert io.newest_on_or_before(days, dt.date(2016, 1, 4)) == dt.date(2016, 1, 1)
    assert io.newest_on_or_before(days, dt.date(2017, 1, 1)) == dt.date(2016, 1, 5)


@pytest.mark.spark
def test_time_split_shares_the_whole_evaluation_period(spark):
    cutoff = day_start_ms(D)
    rows = [(1, cutoff - 1), (1, cutoff + DAY_MS), (1, cutoff + 3 * DAY_MS), (1, cutoff + 9 * DAY_MS)]
    frame = spark.createDataFrame(rows, "user_idx int, ts_ms long")
    split = assign_splits(frame, cutoff, "time", 0.5, seed=7, eval_end_ms=cutoff + 10 * DAY_MS)
    assert [r["split"] for r in split.orderBy("ts_ms").collect()] == [TRAIN, VALID, VALID, TEST]
    one_day = assign_splits(frame, cutoff, "time", 0.5, seed=7)  # the nightly: day D only
    assert [r["split"] for r in one_day.orderBy("ts_ms").collect()] == [TRAIN, TEST, TEST, TEST]


@pytest.mark.spark
def test_user_holdout_sends_every_row_of_a_held_out_user_to_evaluation_whatever_its_time(spark):
    from pyspark.sql import functions as F

    cutoff = day_start_ms(D)
    times = [cutoff - 400 * DAY_MS, cutoff - 1, cutoff, cutoff + 5 * DAY_MS]
    frame = spark.createDataFrame([(u, t) for u in range(400) for t in times], "user_idx int, ts_ms long")
    split = assign_splits(frame, cutoff, "user_holdout", 0.5, seed=7, eval_end_ms=cutoff + 10 * DAY_MS,
                          holdout_share=0.3)
    per_user = {r["user_idx"]: set(r["splits"]) for r in
                split.groupBy("user_idx").agg(F.collect_set("split").alias("splits")).collect()}
    assert all(len(s) == 1 for s in per_user.values())  # one split per user, before and after the cut-off
    held = [u for u, s in per_user.items() if s != {TRAIN}]
    assert 0.2 < len(held) / 400 < 0.4  # holdout_share of the users, by a seeded hash
    valid = sum(per_user[u] == {VALID} for u in held)
    assert 0.3 < valid / len(held) < 0.7  # valid_share of the held-out users
    again = assign_splits(frame, cutoff, "user_holdout", 0.5, seed=7, holdout_share=0.3)
    assert sorted(map(tuple, again.collect())) == sorted(map(tuple, split.collect()))  # not tied to the eval end
    assert {r["split"] for r in assign_splits(frame, cutoff, "user_holdout", 0.5, seed=7).collect()} == {TRAIN}


@pytest.mark.spark
def test_relevant_items_cover_the_evaluation_days(spark):
    from recpipe.als.evaluate import relevant_items

    start = dt.datetime(2016, 1, 1, 12)
    frame = spark.createDataFrame(
        [(1, 10, "click", start), (1, 11, "click", start + dt.timedelta(days=2)), (1, 12, "impression", start),
         (2, 10, "click", start - dt.timedelta(days=1))],
        "user_idx int, item_idx int, event_type string, ts timestamp")
    assert [tuple(r) for r in relevant_items(frame, D).collect()] == [(1, [10])]
    assert [tuple(r) for r in relevant_items(frame, D, days=3).collect()] == [(1, [10, 11])]


@pytest.mark.spark
def test_leave_last_out_holds_out_each_user_s_last_click_and_what_followed_it(spark):
    from recpipe.report import hold_out_last_positive, training_events

    t = dt.datetime(2016, 1, 1)
    at = lambda minutes: t + dt.timedelta(minutes=minutes)  # noqa: E731
    events = spark.createDataFrame([
        (1, 10, "impression", at(0)), (1, 10, "click", at(1)),
        (1, 20, "impression", at(5)), (1, 20, "click", at(6)),     # user 1's last click: item 20
        (1, 30, "impression", at(7)),                              # after it: held out too
        (2, 10, "impression", at(0)), (2, 10, "click", at(1)),     # one click only: not held out
    ], "user_idx int, item_idx int, event_type string, ts timestamp")
    held = hold_out_last_positive(events, min_positives=2)
    assert [(r["user_idx"], r["relevant"]) for r in held.collect()] == [(1, [20])]
    kept = sorted((r["user_idx"], r["item_idx"], r["event_type"]) for r in training_events(events, held).collect())
    assert kept == [(1, 10, "click"), (1, 10, "impression"), (2, 10, "click"), (2, 10, "impression")]


def test_platt_logloss_matches_a_calibrated_score_and_is_nan_without_both_labels():
    from recpipe.report import platt_logloss

    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-(2 * scores - 1)))).astype(int)
    expected = -np.mean(labels[10_000:] * np.log(1 / (1 + np.exp(-(2 * scores[10_000:] - 1))))
                        + (1 - labels[10_000:]) * np.log(1 - 1 / (1 + np.exp(-(2 * scores[10_000:] - 1)))))
    got = platt_logloss(scores[:10_000] * 7 + 3, labels[:10_000], scores[10_000:] * 7 + 3, labels[10_000:])
    assert got == pytest.approx(expected, abs=0.005)  # any affine rescaling of the score is undone
    assert np.isnan(platt_logloss(scores[:10], np.zeros(10), scores[:10], labels[:10]))


def test_report_names_the_split_rule_the_samples_were_built_with():
    from recpipe.report import ranker_split_rule

    holdout = ranker_split_rule({"eval_split": "user_holdout", "valid_share": 0.25, "holdout_share": 0.4})
    assert "holds out 40% of the users" in holdout and "25% of them valid" in holdout
    assert "first 50% of the evaluation period" in ranker_split_rule({"eval_split": "time", "valid_share": 0.5})
    assert "30% of them valid" in ranker_split_rule({"eval_split": "user_hash", "valid_share": 0.3})
