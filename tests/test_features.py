"""The features stage: point-in-time features, behaviour sequences and leak-free samples.

Transform tests run on tiny hand-made frames with exact expected values. The end-to-end
tests write a small lake (events with late arrivals, two catalogue snapshots, planted
events for user 99), run the stage for D, and check every sample against an independent
pandas recomputation from the events that were written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import day_folder

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
D = dt.date(2026, 11, 10)
LOCAL_CONF = Path(__file__).resolve().parent.parent / "conf" / "local.yaml"


def at(day: dt.date, hours: int = 0, minutes: int = 0, seconds: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hours, minutes, seconds, tzinfo=UTC)


def before(days: int, hours: int = 0, minutes: int = 0, seconds: int = 0) -> dt.datetime:
    """A time `days` days before D, at the given time of day."""
    return at(D - dt.timedelta(days=days), hours, minutes, seconds)


def event(event_id, user, item, event_type, when, request=None, position=None):
    """A row of EVENTS_SCHEMA."""
    return (event_id, f"u{user}", f"i{item}", user, item, event_type, when, None, request, position, None, None, None)


def events_frame(spark, rows):
    from recpipe.etl.sequences import with_event_time
    from recpipe.schema import EVENTS_SCHEMA

    return with_event_time(spark.createDataFrame(rows, EVENTS_SCHEMA))


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


# --- sequences -----------------------------------------------------------------------

def test_user_sequences_are_the_last_L_before_the_cutoff_most_recent_last_left_padded(spark):
    from recpipe.etl.sequences import build_user_sequences, day_start_ms, select_interactions

    categories = spark.createDataFrame([(11, 1), (12, 2), (13, 3), (14, 4), (21, 7)], "item_idx int, cat_idx int")
    events = events_frame(spark, [
        event("e4", 1, 14, "purchase", before(1, 12)),
        event("e1", 1, 11, "click", before(5, 8)),           # the oldest: truncated away at L=4
        event("e3b", 1, 13, "click", before(2, 9)),          # same ts as e3a: ties go by event_id
        event("e3a", 1, 12, "add_to_cart", before(2, 9)),
        event("e2", 1, 99, "rating", before(4)),             # item without a category -> cat 0
        event("imp", 1, 16, "impression", before(1, 13)),    # impressions are not interactions
        event("cut", 1, 15, "click", at(D)),                 # exactly at the cut-off: excluded
        event("next", 1, 15, "click", at(D, 5)),
        event("u2", 2, 21, "click", before(3)),
        event("u3", 3, 21, "click", at(D, 1)),               # only after the cut-off: no row
    ])
    interactions = select_interactions(events, categories, ("click", "add_to_cart", "purchase", "rating"))

    rows = {
        r["user_idx"]: (r["hist_items"], r["hist_cats"], r["hist_len"])
        for r in build_user_sequences(interactions, history_length=4, cutoff_ms=day_start_ms(D)).collect()
    }

    assert rows == {
        1: ([99, 12, 13, 14], [0, 2, 3, 4], 4),
        2: ([0, 0, 0, 21], [0, 0, 0, 7], 1),
    }


def test_each_impression_sees_only_interactions_strictly_before_it(spark):
    from recpipe.etl.sequences import attach_histories

    since = before(1)
    interactions = spark.createDataFrame(
        [(1, item, item + 100, item + 200, ms(before(3, item)), f"old{item}") for item in range(1, 6)]  # 5 before `since`
        + [
            (1, 6, 106, 206, ms(before(1, 10)), "cart-same-ts"),     # same ts as impression i1
            (1, 7, 107, 207, ms(before(1, 10, 0, 1)), "click-i1"),   # i1's own click, 1 s later
            (2, 21, 121, 221, ms(before(2)), "u2-old"),
        ],
        "user_idx int, item_idx int, cat_idx int, brand_idx int, ts_ms long, event_id string",
    )
    impressions = spark.createDataFrame(
        [
            ("i0", 1, 9, ms(since), "r0"),
            ("i1", 1, 7, ms(before(1, 10)), "r1"),
            ("i2", 1, 8, ms(before(1, 10, 10)), "r2"),
            ("j1", 2, 22, ms(before(1, 3)), "r3"),
            ("k1", 3, 31, ms(before(1, 4)), "r4"),   # a user with no interactions at all
        ],
        "event_id string, user_idx int, item_idx int, ts_ms long, request_id string",
    )

    out = {
        r["event_id"]: (r["hist_items"], r["hist_cats"], r["hist_len"], r["request_id"], r["item_idx"], r["hist_brands"])
        for r in attach_histories(impressions, interactions, history_length=3, since_ms=ms(since)).collect()
    }

    assert out == {
        "i0": ([3, 4, 5], [103, 104, 105], 3, "r0", 9, [203, 204, 205]),
        "i1": ([3, 4, 5], [103, 104, 105], 3, "r1", 7, [203, 204, 205]),   # neither its own click nor the same-ts cart
        "i2": ([5, 6, 7], [105, 106, 107], 3, "r2", 8, [205, 206, 207]),   # a later impression does see i1's click
        "j1": ([0, 0, 21], [0, 0, 121], 1, "r3", 22, [0, 0, 221]),
        "k1": ([0, 0, 0], [0, 0, 0], 0, "r4", 31, [0, 0, 0]),
    }


def test_impression_category_shares_count_only_the_days_before_each_cut_off(spark):
    """The cold-start feature is point in time: for (user, d) only impressions of days
    d - lookback .. d - 1 count; none of day d itself (before or after the sample) nor later."""
    from recpipe.etl.activity import CATEGORY_SHARES, daily_category_counts, impression_category_shares
    from recpipe.etl.sequences import EVENT_DAY

    d = 100
    shown = [  # (user, item, day); item k has category k % 3 + 1, item 9 no category
        (1, 3, d - 5), (1, 3, d - 2), (1, 4, d - 1), (1, 9, d - 1),
        (1, 5, d), (1, 5, d), (1, 3, d + 1),           # the day itself and later: never counted for d
        (2, 4, d - 30),                                # outside a lookback of 10
    ]
    impressions = spark.createDataFrame(shown, f"user_idx int, item_idx int, {EVENT_DAY} int")
    categories = spark.createDataFrame([(k, k % 3 + 1) for k in range(1, 9)], "item_idx int, cat_idx int")
    targets = spark.createDataFrame([(1, d), (1, d + 2), (2, d), (3, d)], f"user_idx int, {EVENT_DAY} int")

    shares = impression_category_shares(daily_category_counts(impressions, categories, 3), targets, 3,
                                        lookback_days=10)
    out = {(r["user_idx"], r[EVENT_DAY]): [round(x, 4) for x in r[CATEGORY_SHARES]] for r in shares.collect()}

    assert out == {
        (1, d): [round(2 / 3, 4), round(1 / 3, 4), 0.0],   # items 3, 3 (cat 1) and 4 (cat 2); item 9 has none
        (1, d + 2): [0.5, round(1 / 6, 4), round(2 / 6, 4)],  # two days later, day d and d + 1 count too
        (2, d): [0.0, 0.0, 0.0],                           # the one impression is older than the look-back
        (3, d): [0.0, 0.0, 0.0],                           # never shown anything
    }


# --- features ------------------------------------------------------------------------

WINDOWS = (1, 7, 30)
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase", "rating")
INTERACTION_TYPES = ("click", "add_to_cart", "purchase", "rating")


def hand_made_events(spark):
    """User 1: activity across the windows; user 2: impressions only; user 3: one old click;
    user 4: only after the cut-off."""
    rows = [
        event("a1", 1, 1, "impression", before(1, 10)),
        event("a2", 1, 2, "impression", before(1, 10)),
        event("b1", 1, 1, "impression", before(5, 9)),
        event("b2", 1, 2, "impression", before(5, 9)),
        event("b3", 1, 3, "impression", before(5, 9)),
        event("c1", 1, 5, "impression", before(7)),              # first instant of the 7-day window
        event("c2", 1, 5, "impression", before(8, 23, 59, 59)),  # last instant before it
        *[event(f"d{i}", 1, 5, "impression", before(20)) for i in range(4)],
        event("e1", 1, 5, "impression", before(40)),             # outside every window
        event("f1", 1, 2, "impression", at(D)),                  # at the cut-off: excluded
        event("k1", 1, 1, "click", before(1, 18)),               # the last interaction: recency 0.25 d
        event("k2", 1, 2, "click", before(5, 12)),
        event("k3", 1, 9, "click", before(40)),
        event("g1", 1, 2, "add_to_cart", before(3)),
        event("h1", 1, 3, "purchase", before(25)),
        event("r1", 1, 8, "rating", before(2)),                  # item 8 has no category
        event("x1", 2, 2, "impression", before(2)),
        event("y1", 3, 1, "click", before(35)),
        event("z1", 4, 1, "click", at(D, 6)),
    ]
    return events_frame(spark, rows)


def test_user_features_count_each_type_and_window_ctr_recency_and_favourite_categories(spark):
    from recpipe.etl.activity import (
        active_before,
        build_user_features,
        daily_activity,
        favourite_categories,
        user_features_as_of,
    )
    from recpipe.etl.feature_names import user_dense_names
    from recpipe.etl.sequences import day_start_ms, epoch_day, select_interactions

    categories = spark.createDataFrame([(1, 4), (2, 2), (3, 3), (5, 1), (9, 9)], "item_idx int, cat_idx int")
    events = hand_made_events(spark)
    daily = daily_activity(events, "user_idx", INTERACTION_TYPES)
    targets = active_before(daily, "user_idx", epoch_day(D), 60)
    user_asof = user_features_as_of(daily, targets, WINDOWS, 60)
    interactions = select_interactions(events, categories, INTERACTION_TYPES)
    favourites = favourite_categories(interactions, day_start_ms(D), 30, 3)

    table = {r["user_idx"]: r.asDict() for r in build_user_features(user_asof, targets, favourites, epoch_day(D),
                                                                     WINDOWS, 3).collect()}

    assert sorted(table) == [1, 2, 3]
    one = table[1]
    assert [one[f"impression_{w}d"] for w in WINDOWS] == [2, 6, 11]
    assert [one[f"click_{w}d"] for w in WINDOWS] == [1, 2, 2]
    assert [one[f"add_to_cart_{w}d"] for w in WINDOWS] == [0, 1, 1]
    assert [one[f"purchase_{w}d"] for w in WINDOWS] == [0, 0, 1]
    assert [one[f"rating_{w}d"] for w in WINDOWS] == [0, 1, 1]
    assert [one[f"ctr_{w}d"] for w in WINDOWS] == pytest.approx([1 / 2, 2 / 6, 2 / 11])
    assert one["recency_days"] == pytest.approx(0.25)
    # cat 2 twice; cats 4 and 3 once each, 4 more recently; cat 0 (unknown) never counts.
    assert one["fav_cats"] == [2, 4, 3]
    assert len(one["user_dense"]) == len(user_dense_names(WINDOWS))
    assert one["user_dense"][0] == pytest.approx(math.log1p(2))            # log1p(impression_1d)
    assert one["user_dense"][-1] == pytest.approx(math.log1p(0.25), rel=1e-6)

    two = table[2]
    assert [two[f"impression_{w}d"] for w in WINDOWS] == [0, 1, 1]
    assert [two[f"ctr_{w}d"] for w in WINDOWS] == [0.0, 0.0, 0.0]           # no clicks, no division by 0
    assert two["recency_days"] is None                                        # never interacted
    assert two["fav_cats"] == [0, 0, 0]
    three = table[3]
    assert [three[f"click_{w}d"] for w in WINDOWS] == [0, 0, 0]
    assert three["ctr_1d"] == 0.0 and three["recency_days"] == pytest.approx(35.0)


# --- labels and splits ----------------------------------------------------------------

def test_a_label_needs_a_click_on_the_same_item_and_request_within_the_window(spark):
    from recpipe.etl.samples import label_impressions, select_impressions

    t = before(1, 12)
    plus = lambda **kw: t + dt.timedelta(**kw)  # noqa: E731
    events = events_frame(spark, [
        event("hit", 1, 1, "impression", t, "r1"), event("c-hit", 1, 1, "click", plus(seconds=10), "r1"),
        event("edge", 1, 6, "impression", t, "r6"), event("c-edge", 1, 6, "click", plus(minutes=30), "r6"),
        event("late", 1, 2, "impression", t, "r2"), event("c-late", 1, 2, "click", plus(minutes=31), "r2"),
        event("other-req", 1, 3, "impression", t, "r3"), event("c-other-req", 1, 3, "click", plus(seconds=10), "r4"),
        event("other-item", 1, 4, "impression", t, "r5"), event("c-other-item", 1, 5, "click", plus(seconds=10), "r5"),
        event("before", 1, 7, "impression", t, "r7"), event("c-before", 1, 7, "click", plus(seconds=-5), "r7"),
        event("other-user", 1, 8, "impression", t, "r8"), event("c-other-user", 2, 8, "click", plus(seconds=5), "r8"),
        event("no-req", 1, 9, "impression", t, None), event("c-no-req", 1, 9, "click", plus(seconds=5), None),
    ])
    impressions = select_impressions(events, ms(before(2)), ms(at(D)))

    labels = {r["event_id"]: r["label"] for r in label_impressions(impressions, events, 30).collect()}

    assert labels == {"hit": 1.0, "edge": 1.0, "late": 0.0, "other-req": 0.0, "other-item": 0.0,
                      "before": 0.0, "other-user": 0.0, "no-req": 0.0}


def test_splits_are_by_time_and_negative_sampling_keeps_every_positive(spark):
    from pyspark.sql import functions as F
    from recpipe.etl.samples import assign_splits, downsample_negatives
    from recpipe.etl.sequences import DAY_MS, day_start_ms

    cutoff = day_start_ms(D)
    n_train, n_eval = 6000, 2000
    frame = (
        spark.range(n_train + n_eval)
        .select(
            F.concat(F.lit("e"), F.col("id")).alias("event_id"),
            (F.col("id") % 400).cast("int").alias("user_idx"),
            F.when(F.col("id") < n_train, F.lit(cutoff - 3 * DAY_MS) + F.col("id") * 37)
             .otherwise(F.lit(cutoff) + (F.col("id") - n_train) * (DAY_MS // n_eval)).alias("ts_ms"),
            F.when(F.col("id") % 10 == 0, 1.0).otherwise(0.0).cast("float").alias("label"),
        )
    )

    splits = (
        frame
        .transform(lambda f: assign_splits(f, cutoff, "user_hash", 0.5, seed=8))
        .withColumnRenamed("split", "other_seed")
        .transform(lambda f: assign_splits(f, cutoff, "time", 0.25, seed=7))
        .withColumnRenamed("split", "by_time")
        .transform(lambda f: assign_splits(f, cutoff, "user_hash", 0.5, seed=7))
        .transform(lambda f: downsample_negatives(f, 0.2, seed=7).select("event_id").withColumn("kept", F.lit(True))
                   .join(f, "event_id", "right"))
        .toPandas()
    )

    assert set(splits.loc[splits.ts_ms < cutoff, "split"]) == {"train"}
    assert set(splits.loc[splits.ts_ms >= cutoff, "split"]) == {"valid", "test"}
    day_d = splits[splits.ts_ms >= cutoff]
    assert day_d.groupby("user_idx").split.nunique().max() == 1               # a user is valid or test, never both
    assert 140 <= day_d[day_d.split == "valid"].user_idx.nunique() <= 260      # about half of 400 users
    assert not day_d.split.equals(day_d.other_seed)                            # the seed decides
    assert (day_d.by_time == np.where(day_d.ts_ms < cutoff + DAY_MS // 4, "valid", "test")).all()

    kept = splits.kept.fillna(False).astype(bool)
    train = splits[splits.split == "train"]
    assert kept[(splits.split == "train") & (splits.label == 1)].all() and (train.label == 1).sum() == 600
    negatives = (train.label == 0).sum()
    kept_negatives = kept[(splits.split == "train") & (splits.label == 0)].sum()
    assert abs(kept_negatives - 0.2 * negatives) < 5 * math.sqrt(negatives * 0.2 * 0.8)
    assert kept[splits.split != "train"].all()                                 # eval keeps its true click rate


def test_run_rejects_a_bad_features_setting_by_name(spark, make_config):
    from recpipe.errors import ConfigError
    from recpipe.etl.features import run

    with pytest.raises(ConfigError, match="features.eval_split"):
        run(spark, make_config("features.eval_split=random"), D)
    with pytest.raises(ConfigError, match="features.negative_sampling_rate"):
        run(spark, make_config("features.negative_sampling_rate=0.0"), D)
    with pytest.raises(ConfigError, match="features.holdout_share"):
        run(spark, make_config("features.eval_split=user_holdout", "features.holdout_share=1.0"), D)


# --- the stage end to end ------------------------------------------------------------

L = 4
TRAIN_DAYS = 3
E2E_OVERRIDES = (
    f"features.history_length={L}",
    f"features.train_days={TRAIN_DAYS}",
    "features.lookback_days=10",
    "features.windows_days=[1, 7]",
    "features.negative_sampling_rate=0.5",
    "features.min_files_per_split=3",
    "features.files_per_day=1",
)
ITEMS = 24           # item 24 is not in the catalogue (category 0)
NEW_PRICE_ITEM = 5   # its price changes in the second catalogue snapshot


def synthetic_events(seed: int = 0) -> list[tuple]:
    """Feeds of 4 impressions for 30 users, 3 requests a day from D-4 to D+1; clicks (some
    after the attribution window), carts and ratings; 5% of events land in the next
    day's file. Plus the planted events of user 99. Rows: (file day, event row)."""
    rng = np.random.default_rng(seed)
    out, n = [], 0

    def add(user, item, event_type, when, request=None, file_day=None, position=None):
        nonlocal n
        n += 1
        late = file_day is None and rng.random() < 0.05
        out.append((file_day or when.date() + dt.timedelta(days=int(late)),
                    event(f"e{n:05d}", user, item, event_type, when, request, position)))

    for day in (D + dt.timedelta(days=i) for i in range(-4, 2)):
        for user in range(1, 31):
            for r in range(3):
                shown = at(day) + dt.timedelta(seconds=int(rng.integers(0, 86_400 - 5_000)))
                request = f"{day}-{user}-{r}"
                for slot, item in enumerate(rng.choice(np.arange(1, ITEMS + 1), size=4, replace=False).tolist()):
                    add(user, item, "impression", shown, request, position=slot)
                    if rng.random() < 0.25:
                        clicked = shown + dt.timedelta(seconds=int(rng.integers(1, 600)))
                        add(user, item, "click", clicked, request)
                        if rng.random() < 0.3:
                            add(user, item, "add_to_cart", clicked + dt.timedelta(seconds=int(rng.integers(1, 300))))
                    elif rng.random() < 0.05:   # a click after the window: not a positive
                        add(user, item, "click", shown + dt.timedelta(minutes=int(rng.integers(31, 60))), request)
                if rng.random() < 0.1:
                    add(user, int(rng.integers(1, ITEMS + 1)), "rating", shown - dt.timedelta(minutes=5))

    planted = [
        (3, "click", before(2, 9), None, None),
        (5, "impression", before(1, 10), "p1", None),          # P1: clicked 1 s later
        (5, "click", before(1, 10, 0, 1), "p1", None),
        (6, "impression", before(1, 10, 5), "p2", None),        # P2: sees P1's click
        (7, "purchase", before(1, 23, 59, 59), None, D),        # late: in D's file, before the cut-off
        (8, "click", at(D), None, None),                        # at the cut-off: after it
        (9, "impression", at(D, 8), "p3", None),                # P3: day D, sees all four
    ]
    for item, event_type, when, request, file_day in planted:
        add(99, item, event_type, when, request, file_day=file_day or when.date())
    return out


def catalogue_rows(snapshot: dt.date) -> list[tuple]:
    rows = []
    for item in range(1, ITEMS):
        price = 50.0 if item == NEW_PRICE_ITEM and snapshot >= D - dt.timedelta(days=1) else 5.0 + item
        rows.append((f"i{item}", item, f"c{item % 4}", item % 4 + 1, f"b{item % 3}", item % 3 + 1, price, f"t{item}",
                     snapshot))
    return rows


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """A written lake, the config, the events as pandas, and the summary of run(D).

    Module-scoped so that the stage runs once for all the end-to-end tests; hence a config
    loaded here rather than through the per-test `make_config`.
    """
    from pyspark.sql import types as T
    from recpipe import io
    from recpipe.config import load_config
    from recpipe.etl.features import run
    from recpipe.schema import EVENTS_SCHEMA

    cfg = load_config(LOCAL_CONF, [f"paths.root={tmp_path_factory.mktemp('features') / 'root'}", *E2E_OVERRIDES])
    written = synthetic_events()
    with_file_day = T.StructType(EVENTS_SCHEMA.fields + [T.StructField("dt", T.DateType())])
    io.write_days(spark.createDataFrame([(*row, day) for day, row in written], with_file_day), cfg, "events", files=1)
    catalogue = [row for snap in (D - dt.timedelta(days=4), D - dt.timedelta(days=1)) for row in catalogue_rows(snap)]
    io.write_days(
        spark.createDataFrame(catalogue, "item_id string, item_idx int, category string, cat_idx int, brand string, "
                                         "brand_idx int, price double, title string, dt date"),
        cfg, "catalogue", files=1,
    )

    frame = pd.DataFrame([(day, *row) for day, row in written],
                         columns=["file_day", "event_id", "user_id", "item_id", "user_idx", "item_idx", "event_type",
                                  "ts", "session_id", "request_id", "position", "device", "price", "rating"])
    frame["ts_ms"] = frame.ts.map(ms)
    cats = {item: item % 4 + 1 for item in range(1, ITEMS)}
    frame["cat_idx"] = frame.item_idx.map(lambda i: cats.get(i, 0))
    return {"cfg": cfg, "events": frame, "summary": run(spark, cfg, D)}


def visible(events: pd.DataFrame, date: dt.date = D) -> pd.DataFrame:
    """What a run for `date` may read: files up to `date`."""
    return events[events.file_day <= date]


def expected_history(interactions: pd.DataFrame, user: int, before_ms: int) -> tuple[list, list, int]:
    """Independent recomputation: the user's last L interactions strictly before `before_ms`."""
    seen = interactions[(interactions.user_idx == user) & (interactions.ts_ms < before_ms)]
    last = seen.sort_values(["ts_ms", "event_id"]).tail(L)
    pad = [0] * (L - len(last))
    return pad + last.item_idx.tolist(), pad + last.cat_idx.tolist(), len(last)


def read_output(cfg, name: str, date: dt.date = D) -> pd.DataFrame:
    """One day of an output table, read with pyarrow (hive partitions such as split= included)."""
    import pyarrow.parquet as pq

    return pq.read_table(day_folder(cfg, name, date)).to_pandas()


def test_sequences_table_matches_a_recomputation_and_respects_the_cutoff(spark, lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    interactions = events[events.event_type.isin(INTERACTION_TYPES)]
    table = read_output(cfg, "sequences")

    users = sorted(interactions[interactions.ts_ms < ms(at(D))].user_idx.unique())
    assert sorted(table.user_idx) == users
    for row in table.itertuples():
        assert (list(row.hist_items), list(row.hist_cats), row.hist_len) == \
            expected_history(interactions, row.user_idx, ms(at(D)))
    planted = table[table.user_idx == 99].iloc[0]
    assert list(planted.hist_items) == [0, 3, 5, 7]   # the late purchase counts, the click at 00:00 does not
    assert lake["summary"]["sequences"] == len(users)


def test_user_features_table_matches_a_recomputation(spark, lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    table = read_output(cfg, "user_features").set_index("user_idx")
    cutoff = ms(at(D))
    assert len(table) == lake["summary"]["user_features"]
    for user, row in table.iterrows():
        mine = events[(events.user_idx == user) & (events.ts_ms < cutoff)]
        for days in (1, 7):
            window = mine[mine.ts_ms >= cutoff - days * 86_400_000]
            for event_type in ("impression", "click", "add_to_cart", "purchase", "rating"):
                assert row[f"{event_type}_{days}d"] == (window.event_type == event_type).sum()
        last = mine[mine.event_type.isin(INTERACTION_TYPES)].ts_ms.max()
        assert row.recency_days == pytest.approx((cutoff - last) / 86_400_000)
        assert len(row.fav_cats) == 3 and len(row.user_dense) == 13 + 4  # activity and recency, then 4 category shares
        shown = mine[(mine.event_type == "impression") & (mine.ts_ms >= cutoff - 10 * 86_400_000) & (mine.cat_idx > 0)]
        expected = np.bincount(shown.cat_idx, minlength=5)[1:] / max(len(shown), 1)
        assert row.user_dense[13:] == pytest.approx(expected, abs=1e-6)


def test_samples_labels_splits_and_sampling_match_the_events(spark, lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    samples = read_output(cfg, "samples")
    impressions = events[(events.event_type == "impression")
                         & (events.ts_ms >= ms(before(TRAIN_DAYS))) & (events.ts_ms < ms(at(D + dt.timedelta(days=1))))]
    clicks = events[events.event_type == "click"]
    pairs = impressions.merge(clicks, on=["user_idx", "item_idx", "request_id"], suffixes=("", "_c"))
    pairs = pairs[(pairs.ts_ms_c >= pairs.ts_ms) & (pairs.ts_ms_c <= pairs.ts_ms + 30 * 60_000)]
    truth = impressions.assign(label=impressions.event_id.isin(pairs.event_id).astype(float)).set_index("event_id")

    assert samples.event_id.is_unique and set(samples.event_id) <= set(truth.index)
    assert (samples.label.values == truth.label[samples.event_id].values).all()
    train, evaluation = samples[samples.split == "train"], samples[samples.split != "train"]
    assert train.ts_ms.between(ms(before(TRAIN_DAYS)), ms(at(D)) - 1).all()
    assert evaluation.ts_ms.between(ms(at(D)), ms(at(D + dt.timedelta(days=1))) - 1).all()
    # valid/test: all of day D, split by user, no user on both sides
    assert sorted(evaluation.event_id) == sorted(truth[truth.ts_ms >= ms(at(D))].index)
    assert evaluation.groupby("user_idx").split.nunique().max() == 1
    assert set(evaluation.split) == {"valid", "test"}
    # train: every positive, about half of the negatives
    truth_train = truth[truth.ts_ms < ms(at(D))]
    assert (train.label == 1).sum() == (truth_train.label == 1).sum() > 50
    negatives = (truth_train.label == 0).sum()
    assert abs((train.label == 0).sum() - 0.5 * negatives) < 5 * math.sqrt(negatives * 0.25)

    meta = json.loads(Path(day_folder(cfg, "samples", D), "_meta.json").read_text())
    assert meta["negative_sampling_rate"] == 0.5 and meta["history_length"] == L
    assert meta["rows"] == {s: int((samples.split == s).sum()) for s in ("train", "valid", "test")}
    assert meta["rows"] == lake["summary"]["samples"]
    assert len(meta["user_dense_features"]) == 13 + 4 and len(meta["item_dense_features"]) == 13
    assert meta["user_dense_features"][13:] == [f"impression_share_cat{k:03d}" for k in range(1, 5)]


def test_no_sample_sees_its_own_click_or_anything_later(spark, lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    interactions = events[events.event_type.isin(INTERACTION_TYPES)]
    ts_of = interactions.groupby(["user_idx", "item_idx"]).ts_ms.apply(list).to_dict()
    samples = read_output(cfg, "samples")

    for row in samples.itertuples():
        assert (list(row.hist_items), list(row.hist_cats), row.hist_len) == \
            expected_history(interactions, row.user_idx, row.ts_ms), row.event_id
        for item in row.hist_items[L - row.hist_len:]:   # each history item has an earlier interaction
            assert min(ts_of[(row.user_idx, item)]) < row.ts_ms

    planted = samples[samples.user_idx == 99].set_index("item_idx")
    assert planted.loc[5, "label"] == 1.0
    assert list(planted.loc[5, "hist_items"]) == [0, 0, 0, 3]          # P1: not its own click 1 s later
    assert list(planted.loc[9, "hist_items"]) == [3, 5, 7, 8]          # P3 (day D): the click at 00:00 counts
    if 6 in planted.index:                                             # P2 is a train negative: maybe sampled out
        assert list(planted.loc[6, "hist_items"]) == [0, 0, 3, 5]


def expected_activity(events: pd.DataFrame, key: str, value: int, day: dt.date) -> list[float]:
    """Independent recomputation of the dense activity entries (log1p counts, then CTRs)
    of one user or item as of `day`'s cut-off."""
    cutoff = ms(at(day))
    mine = events[(events[key] == value) & (events.ts_ms < cutoff)]
    counts, ctrs = [], []
    for days in (1, 7):
        window = mine[mine.ts_ms >= cutoff - days * 86_400_000].event_type.value_counts()
        counts += [window.get(t, 0) for t in ("impression", "click", "add_to_cart", "purchase", "rating")]
        ctrs.append(min(window.get("click", 0) / window["impression"], 1.0) if window.get("impression", 0) else 0.0)
    return [math.log1p(c) for c in counts] + ctrs


def price_as_of(item: int, day: dt.date) -> float:
    """The price in the newest catalogue snapshot on or before `day` (0 when not listed)."""
    if item >= ITEMS:
        return 0.0
    return 50.0 if item == NEW_PRICE_ITEM and day >= D - dt.timedelta(days=1) else 5.0 + item


def test_every_sample_has_the_dense_features_of_its_own_day(lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    interactions = events[events.event_type.isin(INTERACTION_TYPES)]
    samples = read_output(cfg, "samples")
    samples["day"] = samples.ts_ms.map(lambda t: dt.date(1970, 1, 1) + dt.timedelta(days=t // 86_400_000))
    assert set(samples.day) == {D - dt.timedelta(days=i) for i in range(TRAIN_DAYS + 1)}

    for (user, day), group in samples.groupby(["user_idx", "day"]):
        cutoff = ms(at(day))
        last = interactions[(interactions.user_idx == user) & (interactions.ts_ms < cutoff)
                            & (interactions.ts_ms >= cutoff - 10 * 86_400_000)].ts_ms.max()
        recency = 10.0 if pd.isna(last) else min((cutoff - last) / 86_400_000, 10.0)   # lookback_days = 10
        shown = events[(events.user_idx == user) & (events.event_type == "impression") & (events.ts_ms < cutoff)
                       & (events.ts_ms >= cutoff - 10 * 86_400_000) & (events.cat_idx > 0)]
        shares = np.bincount(shown.cat_idx, minlength=5)[1:] / max(len(shown), 1)  # as of this day's cut-off only
        expected = expected_activity(events, "user_idx", user, day) + [math.log1p(recency)] + shares.tolist()
        for dense in group.user_dense:
            assert np.allclose(dense, expected, rtol=1e-6, atol=1e-7), (user, day)
    for (item, day), group in samples.groupby(["item_idx", "day"]):
        expected = expected_activity(events, "item_idx", item, day) + [math.log1p(price_as_of(item, day))]
        for dense in group.item_dense:
            assert np.allclose(dense, expected, rtol=1e-6, atol=1e-7), (item, day)

    p1 = samples[(samples.user_idx == 99) & (samples.item_idx == 5)].iloc[0]   # on D-1: as of D-1 00:00
    assert p1.user_dense[1] == pytest.approx(math.log1p(1))                     # click_1d: the click of D-2 09:00
    assert p1.user_dense[12] == pytest.approx(math.log1p(15 / 24), rel=1e-6)   # recency: 15 h before the cut-off
    assert p1.item_dense[-1] == pytest.approx(math.log1p(50.0), rel=1e-6)      # the price of D-1's snapshot


def test_item_features_table_matches_a_recomputation(lake):
    from recpipe.etl.feature_names import item_dense_names

    cfg, events = lake["cfg"], visible(lake["events"])
    table = read_output(cfg, "item_features").set_index("item_idx")
    assert sorted(table.index) == list(range(1, ITEMS + 1)) and len(table) == lake["summary"]["item_features"]
    for item, row in table.iterrows():
        expected = expected_activity(events, "item_idx", item, D)
        assert [math.log1p(row[f"{t}_{w}d"]) for w in (1, 7) for t in EVENT_TYPES] == pytest.approx(expected[:10])
        assert [row.ctr_1d, row.ctr_7d] == pytest.approx(expected[10:])
        assert row.cat_idx == (item % 4 + 1 if item < ITEMS else 0)
        assert (row.price if item < ITEMS else 0.0) == price_as_of(item, D)
        assert len(row.item_dense) == len(item_dense_names((1, 7)))


def test_each_split_gets_at_least_min_files_and_no_file_over_the_record_cap():
    from recpipe.etl.samples import files_for

    assert files_for(5, min_files=16, max_records_per_file=1000) == 5          # one row per file at most
    assert files_for(100, min_files=16, max_records_per_file=1000) == 16
    assert files_for(100_000, min_files=16, max_records_per_file=1000) == 100


def test_samples_carry_the_logged_position_and_the_brands_of_the_candidate_and_its_history(lake):
    cfg, events = lake["cfg"], visible(lake["events"])
    samples = read_output(cfg, "samples").set_index("event_id")
    logged = events.set_index("event_id").position.reindex(samples.index)
    assert (samples.position == logged.fillna(-1).astype(int)).all()  # -1 where the log has no position
    assert set(samples.position) == {-1, 0, 1, 2, 3}
    brand_of = lambda item: item % 3 + 1 if 0 < item < ITEMS else 0  # noqa: E731  (item 24 is not in the catalogue)
    assert (samples.brand_idx == samples.item_idx.map(brand_of)).all()
    for items, brands in zip(samples.hist_items, samples.hist_brands):
        assert list(brands) == [brand_of(i) for i in items]  # padding (0) has brand 0 too


def test_samples_have_petastorm_types_and_enough_row_groups(spark, lake):
    import pyarrow.parquet as pq
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import DataLoader

    cfg = lake["cfg"]
    meta = json.loads(Path(day_folder(cfg, "samples", D), "_meta.json").read_text())
    train_dir = Path(day_folder(cfg, "samples", D), "split=train")
    files = sorted(train_dir.glob("*.parquet"))
    assert len(files) == meta["files"]["train"] == 3
    assert sum(pq.ParquetFile(f).num_row_groups for f in files) >= 3    # Petastorm shards by row group
    schema = pq.read_schema(files[0])
    assert {name: str(schema.field(name).type).replace(" not null", "") for name in schema.names} == {
        "event_id": "string", "user_idx": "int32", "item_idx": "int32", "cat_idx": "int32", "brand_idx": "int32",
        "position": "int32", "label": "float", "hist_items": "list<element: int32>",
        "hist_cats": "list<element: int32>", "hist_brands": "list<element: int32>", "hist_len": "int32",
        "user_dense": "list<element: float>", "item_dense": "list<element: float>", "ts_ms": "int64",
    }
    assert files[0].read_bytes()[:4] == b"PAR1" and pq.ParquetFile(files[0]).metadata.row_group(0).column(0) \
        .compression == "ZSTD"

    rows = 0
    with make_batch_reader(f"file://{train_dir}", num_epochs=1, schema_fields=meta["tensor_columns"],
                           workers_count=1) as reader:
        for batch in DataLoader(reader, batch_size=64):
            rows += len(batch["label"])
            assert batch["hist_items"].dtype == torch.int32 and batch["hist_items"].shape[1:] == (L,)
            assert batch["hist_cats"].shape == batch["hist_items"].shape
            assert batch["user_dense"].dtype == torch.float32 and batch["user_dense"].shape[1:] == (17,)
            assert batch["item_dense"].shape[1:] == (13,) and batch["label"].dtype == torch.float32
            assert batch["ts_ms"].dtype == torch.int64 and batch["cat_idx"].dtype == torch.int32
    assert rows == meta["rows"]["train"]


def checksum(location: str) -> str:
    """A content checksum of a written folder: its rows, sorted, independent of files and order."""
    import pyarrow.parquet as pq

    rows = sorted(repr(sorted(row.items())) for row in pq.read_table(location).to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_rerun_is_identical_and_the_next_day_leaves_d_alone(spark, lake):
    from recpipe.etl.features import run
    from recpipe.etl.samples import read_meta

    cfg = lake["cfg"]
    tables = ("user_features", "item_features", "sequences", "samples")
    first = {name: checksum(day_folder(cfg, name, D)) for name in tables}
    meta = read_meta(cfg, D)

    summary = run(spark, cfg, D + dt.timedelta(days=1))
    assert summary["samples"]["valid"] + summary["samples"]["test"] > 0
    assert read_meta(cfg, D + dt.timedelta(days=1))["rows"] == summary["samples"]
    assert {name: checksum(day_folder(cfg, name, D)) for name in tables} == first

    assert run(spark, cfg, D) == lake["summary"]
    assert {name: checksum(day_folder(cfg, name, D)) for name in tables} == first
    assert read_meta(cfg, D) == meta


def test_the_stage_keeps_its_frames_at_the_configured_level_and_releases_them(spark, lake, monkeypatch):
    # Off the heap by default (DISK_ONLY): with a local master the executors share the driver's heap.
    from pyspark import StorageLevel
    from recpipe.config import load_config
    from recpipe.etl import features

    kept = []

    def persist(frame, cfg, real=features.persist):
        kept.append(real(frame, cfg))
        return kept[-1]

    monkeypatch.setattr(features, "persist", persist)
    cfg = load_config(LOCAL_CONF, [f"paths.root={lake['cfg'].paths.root}", *E2E_OVERRIDES,
                                   "spark.persist_level=MEMORY_ONLY"])
    levels = []  # of the kept frames, seen at each table's write

    def write_table(*args, real=features.write_table):
        levels.extend(frame.storageLevel for frame in kept)
        return real(*args)

    monkeypatch.setattr(features, "write_table", write_table)
    assert features.run(spark, cfg, D) == lake["summary"]  # the same rows per table and split as at the default level
    assert len(kept) == 3  # the events, the per-(user, day) and the per-(item, day) features
    assert len(levels) == 9 and all(level == StorageLevel.MEMORY_ONLY for level in levels)
    assert all(not frame.is_cached for frame in kept)  # released when the stage ends
