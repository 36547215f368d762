"""The Spark part of the train stage: leak-free ALS scores joined onto the samples,
the Petastorm-ready `ranker_input`, and the statistics the network is built with."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.timeout(300)]

D = dt.date(2026, 11, 10)
DAY_MS = 86_400_000


def day(n: int) -> dt.date:
    return D - dt.timedelta(days=n)


def ms(date: dt.date, hour: int = 12) -> int:
    return (date - dt.date(1970, 1, 1)).days * DAY_MS + hour * 3_600_000


def test_each_sample_day_uses_the_newest_als_run_on_or_before_it():
    from recpipe.ranker.inputs import als_day_for

    runs = [day(3), day(1), D + dt.timedelta(days=1)]
    assert als_day_for([day(4), day(3), day(2), day(1), D], runs) == {
        day(4): None, day(3): day(3), day(2): day(3), day(1): day(1), D: day(1),
    }


def test_als_scores_come_from_the_runs_before_each_sample_and_are_0_without_factors(spark):
    from recpipe.etl.sequences import epoch_day
    from recpipe.ranker.inputs import ALS_DAY, als_day_for, attach_als_scores, with_als_day

    samples = spark.createDataFrame([
        ("before-any-run", 1, 10, ms(day(3))),
        ("run-day", 1, 10, ms(day(2), 0)),       # 00:00 of the run's day: that run (trained before it)
        ("next-day", 1, 10, ms(day(1), 23)),      # the newest run before it is still day(2)'s
        ("day-D", 1, 10, ms(D)),                  # day D's own run, never a later one
        ("no-user-factors", 7, 10, ms(D)),
        ("no-item-factors", 1, 99, ms(D)),
    ], "event_id string, user_idx int, item_idx int, ts_ms long")
    factors = lambda rows: spark.createDataFrame(rows, f"{ALS_DAY} int, idx int, features array<float>")  # noqa: E731
    users = factors([(epoch_day(day(2)), 1, [1.0, 2.0]), (epoch_day(D), 1, [0.5, -1.0]),
                     (epoch_day(D) + 1, 1, [100.0, 100.0])]).withColumnRenamed("idx", "user_idx")
    items = factors([(epoch_day(day(2)), 10, [3.0, 4.0]), (epoch_day(D), 10, [2.0, 1.0]),
                     (epoch_day(D) + 1, 10, [100.0, 100.0])]).withColumnRenamed("idx", "item_idx")
    mapping = als_day_for([day(3), day(2), day(1), D], [day(2), D])

    scored = attach_als_scores(with_als_day(samples, mapping), users, items)

    assert {r["event_id"]: r["als_score"] for r in scored.collect()} == {
        "before-any-run": 0.0,
        "run-day": 11.0,      # 1*3 + 2*4 with day(2)'s factors
        "next-day": 11.0,
        "day-D": 0.0,         # 0.5*2 - 1*1 with D's factors
        "no-user-factors": 0.0,
        "no-item-factors": 0.0,
    }
    assert dict(scored.dtypes)["als_score"] == "float"


def sample_rows(rng, n: int, split: str, days: list[dt.date], L: int = 4):
    rows = []
    for i in range(n):
        hist_len = int(rng.integers(0, L + 1))
        hist = [0] * (L - hist_len) + [int(x) for x in rng.integers(1, 30, hist_len)]
        dense_u = None if i == 0 and split == "train" else [float(x) for x in rng.normal(size=2)]
        rows.append((f"{split}-{i}", int(rng.integers(1, 6)), int(rng.integers(1, 25)), int(rng.integers(1, 5)),
                     float(rng.integers(0, 2)), hist, [h % 4 for h in hist], hist_len, dense_u,
                     [float(x) for x in rng.normal(size=3)], ms(days[i % len(days)]), int(rng.integers(0, 9)),
                     int(rng.integers(-1, 8)), [h % 3 for h in hist], split))
    return rows


SAMPLES_SCHEMA = ("event_id string, user_idx int, item_idx int, cat_idx int, label float, hist_items array<int>, "
                  "hist_cats array<int>, hist_len int, user_dense array<float>, item_dense array<float>, "
                  "ts_ms long, brand_idx int, position int, hist_brands array<int>, split string")


def test_ranker_input_is_written_per_split_with_scores_and_train_statistics(spark, make_config):
    from pyspark.sql import functions as F
    from recpipe import io, tables
    from recpipe.etl import samples as S
    from recpipe.ranker.inputs import build_ranker_input, split_location
    from recpipe.splits import iter_split, parquet_rows, read_split, row_groups

    # At most 8 rows a file: the 40 train rows take 5 files, more than min_files_per_split.
    cfg = make_config("features.min_files_per_split=3", "ranker.input_rows_per_file=8")
    rng = np.random.default_rng(0)
    rows = (sample_rows(rng, 40, "train", [day(2), day(1)]) + sample_rows(rng, 10, "valid", [D])
            + sample_rows(rng, 12, "test", [D]))
    samples = spark.createDataFrame(rows, SAMPLES_SCHEMA).withColumn("dt", F.lit(D))
    meta = {"history_length": 4, "user_dense_features": ["u0", "u1"], "item_dense_features": ["i0", "i1", "i2"],
            "train_window": [day(2).isoformat(), D.isoformat()]}
    with tables.committing(cfg, "features"):  # the samples and their meta are one version, as features writes them
        S.write_samples(samples, cfg, D, {"train": 40, "valid": 10, "test": 12}, min_files=3,
                        max_records_per_file=1000, row_group_mb=1)
        S.write_meta(cfg, D, meta)
    # One ALS run, on day(1): day(2)'s samples have none (0.0), day(1)'s and D's use it.
    with tables.committing(cfg, "als"):
        io.write_version(spark.createDataFrame([(u, [0.1 * u, 1.0]) for u in range(1, 6)],
                                               "user_idx int, features array<float>"), cfg, "als_user_factors", day(1), 1)
        io.write_version(spark.createDataFrame([(i, [1.0, 0.01 * i]) for i in range(1, 25)],
                                               "item_idx int, features array<float>"), cfg, "als_item_factors", day(1), 1)

    stats = build_ranker_input(spark, cfg, D, meta, min_files=3)

    assert stats.rows == {"train": 40, "valid": 10, "test": 12}
    assert stats.als_days == {day(2).isoformat(): None, day(1).isoformat(): day(1).isoformat(),
                              D.isoformat(): day(1).isoformat()}
    for split, n in stats.rows.items():
        assert parquet_rows(split_location(cfg, D, split)) == n
        assert row_groups(split_location(cfg, D, split)) >= 3  # Petastorm shards by row group
    train = read_split(split_location(cfg, D, "train"))
    # Rows are dealt round-robin from a random start, so a file can hold a row more than its
    # even share and spill it into a file of its own: at least 5 files, none above 8 rows.
    groups = row_groups(split_location(cfg, D, "train"))
    assert groups >= 5
    # A rank's share, one row group at a time (how the trainer validates): the rows of
    # read_split, in its order, in pieces of at most a row group.
    for rank in (0, 1):
        pieces = list(iter_split(split_location(cfg, D, "train"), ("event_id", "hist_items"), rank, 2))
        share = read_split(split_location(cfg, D, "train"), ("event_id", "hist_items"), rank, 2)
        assert len(pieces) == len(range(rank, groups, 2)) and all(0 < len(p["event_id"]) <= 8 for p in pieces)
        assert np.concatenate([p["event_id"] for p in pieces]).tolist() == share["event_id"].tolist()
        assert np.concatenate([p["hist_items"] for p in pieces]).tolist() == share["hist_items"].tolist()
    by_event = {r[0]: r for r in rows}
    for event_id, score, user_dense, ts in zip(train["event_id"], train["als_score"], train["user_dense"],
                                               (by_event[e][10] for e in train["event_id"])):
        user, item = by_event[event_id][1], by_event[event_id][2]
        expected = 0.0 if ts < ms(day(1), 0) else np.float32(0.1 * user * 1.0 + 1.0 * 0.01 * item)
        assert score == pytest.approx(expected, abs=1e-6)
        if by_event[event_id][8] is None:
            assert user_dense.tolist() == [0.0, 0.0]  # a null dense array becomes zeros of the right length
    # Statistics from the train split only.
    assert stats.item_vocab == 1 + max(max(train["item_idx"]), train["hist_items"].max())
    assert stats.cat_vocab == 1 + max(max(train["cat_idx"]), train["hist_cats"].max())
    assert stats.brand_vocab == 1 + max(max(train["brand_idx"]), train["hist_brands"].max())
    assert train["position"].tolist() == [by_event[e][12] for e in train["event_id"]]
    assert stats.user_dense_mean == pytest.approx(train["user_dense"].mean(axis=0).tolist(), abs=1e-6)
    assert stats.item_dense_std == pytest.approx(train["item_dense"].std(axis=0).tolist(), abs=1e-6)
    assert stats.als_score_mean == pytest.approx(float(train["als_score"].mean()), abs=1e-6)
    # The wide layout: a column per array position, and the training stream reads every
    # sample once per pass with the values the samples hold.
    from recpipe.ranker.data import TrainStream
    from recpipe.splits import TRAIN_COLUMNS, schema_columns

    stored = schema_columns(split_location(cfg, D, "train"))
    assert "hist_items" not in stored and [c for c in stored if c.startswith("hist_items__")] == [
        f"hist_items__{j:02d}" for j in range(4)]
    assert train["hist_items"].tolist() == [by_event[e][5] for e in train["event_id"]]
    assert train["hist_cats"].tolist() == [by_event[e][6] for e in train["event_id"]]

    def row_keys(arrays, n):  # every row as a tuple of its values, in a canonical order
        return sorted(tuple(tuple(np.atleast_1d(arrays[c][i]).astype(float).round(5)) for c in TRAIN_COLUMNS)
                      for i in range(n))

    with TrainStream(split_location(cfg, D, "train"), batch_size=8, rank=0, world=1, seed=3, shuffle_queue=0,
                     workers=1) as stream:
        batches = [next(stream) for _ in range(5)]  # 5 x 8 = the 40 train rows, one pass
    streamed = {c: np.concatenate([b[c].numpy() for b in batches]) for c in TRAIN_COLUMNS}
    assert streamed["hist_items"].shape == (40, 4) and streamed["user_dense"].shape == (40, 2)
    assert row_keys(streamed, 40) == row_keys(train, 40)

    # Two ranks with one seed read disjoint shards that together hold every row group:
    # Petastorm shuffles the row groups with the seed before dealing them out.
    shards = []
    for rank in (0, 1):
        with TrainStream(split_location(cfg, D, "train"), batch_size=1, rank=rank, world=2, seed=3,
                         shuffle_queue=0, workers=1) as stream:
            seen: list[tuple] = []
            while not seen or seen[-1] not in seen[:-1]:  # the stream wraps round: stop at the first repeat
                batch = {c: v.numpy() for c, v in next(stream).items()}
                seen.append(row_keys(batch, 1)[0])
        shards.append(set(seen[:-1]))
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(row_keys(train, 40))


def test_a_rank_s_stream_repeats_exactly_over_several_passes_with_one_seed(tmp_path):
    """Same seed, same batches, pass after pass (the rows of each row group in a new order
    each pass); another seed, another order."""
    import hashlib

    from recpipe.ranker.data import TrainStream
    from recpipe.ranker.toy import write_toy_split

    rows = write_toy_split(str(tmp_path / "train"), [40] * 12, files=3)

    def batches(seed: int, rank: int) -> list[str]:
        with TrainStream(str(tmp_path / "train"), batch_size=16, rank=rank, world=2, seed=seed, shuffle_queue=0,
                         workers=1) as stream:
            return [hashlib.md5(b"".join(v.numpy().tobytes() for v in next(stream).values())).hexdigest()
                    for _ in range(4 * rows // 2 // 16)]  # four passes over the rank's shard

    for rank in (0, 1):
        first = batches(7, rank)
        assert first == batches(7, rank)
        assert len(set(first)) == len(first)  # a later pass is not a replay of the first
    assert batches(8, 0) != batches(7, 0)
