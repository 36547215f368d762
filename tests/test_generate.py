"""The synthetic data generator: reproducible bytes, an honest manifest, a planted truth.

The raw lines are re-read and classified here with rules written from the data contract,
independently of the generator's code, and the counts must match the manifest exactly.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recpipe.config import load_config
from recpipe.errors import ConfigError
from recpipe.generate import ClickParams, click_probability, history_similarities, run

pytestmark = pytest.mark.generate

CONF = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"
# Small but busy: higher fault rates so every kind is planted dozens of times a day,
# several part files per day, enough impressions for the click statistics.
SMALL = [
    "generate.users=3000", "generate.items=800", "generate.categories=12", "generate.days=5",
    "generate.events_per_file=4000", "generate.late_rate=0.02",
    "generate.rate_malformed_json=0.01", "generate.rate_missing_field=0.01",
    "generate.rate_unknown_event_type=0.005", "generate.rate_bad_timestamp=0.005",
    "generate.rate_future_timestamp=0.005", "generate.rate_invalid_value=0.008",
    "generate.rate_duplicate_same_day=0.01", "generate.rate_duplicate_previous_day=0.006",
]
TINY = ["generate.users=300", "generate.items=200", "generate.categories=8", "generate.bot_events_per_hour=600"]

REQUIRED = ("event_id", "user_id", "item_id", "event_type", "ts")
KNOWN_TYPES = ("impression", "click", "add_to_cart", "purchase")
FAULT_KINDS = ("malformed_json", "missing_field", "unknown_event_type", "bad_timestamp", "future_timestamp",
               "invalid_value", "duplicate_event", "bot_traffic")
ISO_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{2}:\d{2})$")
DAY_MS = 86_400_000
FUTURE_AFTER_DAY_END_MS = DAY_MS  # planted future ts are >= 2 days out; any cut-off below that works
BOT_WINDOW_MS = 10 * 60_000
BOT_MAX_EVENTS = 300


def generate(root: Path, *overrides: str):
    cfg = load_config(CONF, [f"paths.root={root}", *overrides])
    return cfg, run(cfg)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    cfg, manifest = generate(root, *SMALL)
    return cfg, manifest, root


@pytest.fixture(scope="module")
def audit(generated):
    """Every raw line classified by the contract's rules, day by day."""
    cfg, _, _ = generated
    seen_ids: set[str] = set()
    days, accepted = {}, []
    for date in cfg.generate.dates:
        counts, events = classify_day(read_lines(Path(cfg.table_path("raw_events", date))), date, seen_ids)
        days[date.isoformat()] = counts
        accepted.append(events.assign(file_date=date))
    return days, pd.concat(accepted, ignore_index=True)


@pytest.fixture(scope="module")
def truth(generated):
    cfg, _, _ = generated
    root = Path(cfg.table_path("truth"))
    impressions = pd.read_parquet(root / "impressions")
    items = pd.read_parquet(root / "items.parquet")
    return impressions, items, pd.read_parquet(root / "users.parquet")


def read_lines(folder: Path) -> list[str]:
    lines = []
    for part in sorted(folder.glob("part-*.json.gz")):
        lines += gzip.decompress(part.read_bytes()).decode().splitlines()
    return lines


def parse_ts_ms(value) -> int | None:
    """Epoch ms from a JSON integer or an ISO-8601 string with ms and an offset."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and ISO_TS.match(value):
        try:
            return round(dt.datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return None
    return None


def single_line_fault(obj, day_end_ms: int) -> str | None:
    """The reason a parsed line is rejected on its own, or None."""
    if not isinstance(obj, dict):
        return "malformed_json"
    if any(obj.get(field) is None for field in REQUIRED):
        return "missing_field"
    if obj["event_type"] not in KNOWN_TYPES:
        return "unknown_event_type"
    ts = parse_ts_ms(obj["ts"])
    if ts is None:
        return "bad_timestamp"
    if ts >= day_end_ms + FUTURE_AFTER_DAY_END_MS:
        return "future_timestamp"
    if (obj.get("price") is not None and obj["price"] < 0) or (obj.get("position") is not None and obj["position"] < 0):
        return "invalid_value"
    return None


def bot_users(events: pd.DataFrame) -> set[str]:
    """Users with more than BOT_MAX_EVENTS events in some BOT_WINDOW_MS window."""
    flagged = set()
    for user, ts in events.groupby("user_id")["ts_ms"]:
        ts = np.sort(ts.to_numpy())
        in_window = np.searchsorted(ts, ts + BOT_WINDOW_MS, side="left") - np.arange(len(ts))
        if in_window.max() > BOT_MAX_EVENTS:
            flagged.add(user)
    return flagged


def classify_day(lines: list[str], date: dt.date, seen_ids: set[str]) -> tuple[dict, pd.DataFrame]:
    """Counts per reason for one day's file and the accepted events (updates `seen_ids`)."""
    day_start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    faults, valid, today, rejected = Counter(), [], set(), []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        reason = single_line_fault(obj, day_start + DAY_MS)
        if reason is None and (obj["event_id"] in seen_ids or obj["event_id"] in today):
            reason = "duplicate_event"
        if reason:
            faults[reason] += 1
            rejected.append((reason, line, obj))
            continue
        today.add(obj["event_id"])
        valid.append({**obj, "ts_ms": parse_ts_ms(obj["ts"])})
    seen_ids |= today
    events = pd.DataFrame(valid)
    bots = bot_users(events)
    is_bot = events["user_id"].isin(bots)
    faults["bot_traffic"] = int(is_bot.sum())
    accepted = events[~is_bot]
    counts = {
        "lines": len(lines),
        "clean_events": len(accepted),
        "clean_by_type": {t: int((accepted["event_type"] == t).sum()) for t in KNOWN_TYPES},
        "late_events": int((accepted["ts_ms"] < day_start).sum()),
        "faults": {kind: faults[kind] for kind in FAULT_KINDS},
        "bot_users": len(bots),
        "bot_ids": bots,
        "rejected": rejected,
    }
    return counts, accepted


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(generated, tmp_path):
    _, _, root = generated
    generate(tmp_path / "again", *SMALL)
    generate(tmp_path / "other", *SMALL, "generate.seed=43")
    first, again, other = file_hashes(root), file_hashes(tmp_path / "again"), file_hashes(tmp_path / "other")
    assert len(first) > 10 and first == again
    raw = [name for name in first if name.startswith("raw/events/")]
    assert all(first[name] != other.get(name) for name in raw)


def test_manifest_counts_match_an_independent_reading_of_the_files(generated, audit):
    _, manifest, _ = generated
    days, _ = audit
    assert list(manifest["days"]) == list(days)
    for date, counted in days.items():
        planted = manifest["days"][date]
        for key in ("lines", "clean_events", "clean_by_type", "late_events", "faults", "bot_users"):
            assert planted[key] == counted[key], (date, key)
        assert planted["lines"] == planted["clean_events"] + sum(planted["faults"].values())
    first, *later = days.values()
    assert first["late_events"] == 0 and all(day["late_events"] > 0 for day in later)
    assert first["faults"]["duplicate_event"] < later[0]["faults"]["duplicate_event"]  # no re-sends on day one
    assert all(n > 0 for day in days.values() for n in day["faults"].values())
    totals = manifest["totals"]
    assert totals["lines"] == sum(day["lines"] for day in days.values())
    assert totals["faults"] == {k: sum(day["faults"][k] for day in days.values()) for k in FAULT_KINDS}


def test_each_fault_kind_is_planted_in_all_its_forms(audit):
    days, _ = audit
    rejected = [r for day in days.values() for r in day["rejected"]]
    by_reason = defaultdict(list)
    for reason, line, obj in rejected:
        by_reason[reason].append((line, obj))
    malformed = [line for line, _ in by_reason["malformed_json"]]
    assert any(line.startswith('{"event_id":') for line in malformed)  # truncated events
    assert any(not line.startswith("{") for line in malformed)  # collector garbage
    missing = {field for _, obj in by_reason["missing_field"] for field in REQUIRED if field not in obj}
    assert missing == set(REQUIRED)
    assert all(sum(field not in obj for field in REQUIRED) == 1 for _, obj in by_reason["missing_field"])
    invalid = [obj for _, obj in by_reason["invalid_value"]]
    assert any(obj.get("price", 0) < 0 and obj["event_type"] == "purchase" for obj in invalid)
    assert any(obj["position"] < 0 for obj in invalid)
    future = [obj["ts"] for _, obj in by_reason["future_timestamp"]]
    assert {type(ts) for ts in future} == {int, str}
    assert all(isinstance(obj["ts"], str) and obj["ts"] for _, obj in by_reason["bad_timestamp"])


def test_files_are_split_by_events_per_file(generated):
    cfg, manifest, _ = generated
    for date in cfg.generate.dates:
        parts = sorted(Path(cfg.table_path("raw_events", date)).glob("part-*.json.gz"))
        sizes = [len(gzip.decompress(p.read_bytes()).splitlines()) for p in parts]
        assert len(parts) > 1 and max(sizes) <= cfg.generate.events_per_file
        assert sum(sizes) == manifest["days"][date.isoformat()]["lines"]


def test_bots_are_separate_accounts_and_regular_users_stay_far_below_the_rate(audit, truth):
    days, accepted = audit
    _, _, users = truth
    bot_ids = set(users.loc[users["is_bot"], "user_id"])
    flagged = set().union(*(day["bot_ids"] for day in days.values()))
    assert flagged and flagged <= bot_ids
    per_user_day = accepted.groupby(["user_id", "file_date"]).size()
    assert per_user_day.max() < BOT_MAX_EVENTS / 3


def test_clean_events_fall_on_their_day_and_late_ones_are_the_previous_days_last(generated, audit):
    cfg, _, _ = generated
    _, accepted = audit
    event_date = pd.to_datetime(accepted["ts_ms"], unit="ms", utc=True).dt.date
    late = event_date < accepted["file_date"]
    assert ((event_date == accepted["file_date"]) | late).all()
    assert (event_date[late] == (accepted["file_date"] - dt.timedelta(days=1))[late]).all()
    for date in cfg.generate.dates[:-1]:
        on_time = accepted[(accepted["file_date"] == date) & (event_date == date)]
        moved = accepted[(accepted["file_date"] == date + dt.timedelta(days=1)) & (event_date == date)]
        assert on_time["ts_ms"].max() <= moved["ts_ms"].min()


def test_actions_follow_their_impression_within_30_minutes(audit):
    _, accepted = audit
    shown = accepted[accepted["event_type"] == "impression"].set_index(["request_id", "position", "item_id"])["ts_ms"]
    clicks = accepted[accepted["event_type"] == "click"].join(shown.rename("shown_ms"),
                                                              on=["request_id", "position", "item_id"])
    delay = clicks["ts_ms"] - clicks["shown_ms"]
    assert clicks["shown_ms"].notna().all()
    assert (delay > 0).all() and (delay < 30 * 60_000).all()
    purchases = accepted[accepted["event_type"] == "purchase"]
    assert len(purchases) and (purchases["price"] > 0).all()


def test_faulty_records_are_copies_of_real_events(audit):
    """A planted record keeps the request and item of a clean event but not its id."""
    days, accepted = audit
    clean_keys = set(zip(accepted["request_id"], accepted["item_id"]))
    clean_ids = set(accepted["event_id"])
    copied = ("unknown_event_type", "bad_timestamp", "future_timestamp", "invalid_value")
    copies = [obj for day in days.values() for reason, _, obj in day["rejected"] if reason in copied]
    assert len(copies) > 20
    assert all((obj["request_id"], obj["item_id"]) in clean_keys for obj in copies)
    assert not any(obj["event_id"] in clean_ids for obj in copies)
    duplicates = [obj for day in days.values() for reason, _, obj in day["rejected"] if reason == "duplicate_event"]
    assert duplicates and all(obj["event_id"] in clean_ids for obj in duplicates)


def test_click_probability_follows_the_nearest_recent_item_not_the_mean():
    dim = 16
    e = np.eye(dim, dtype=np.float32)
    history = np.stack([e[0], e[1]])[None]  # (1, 2, D): one item from each of two categories
    mask = np.ones((1, 2), dtype=bool)
    near_one_item = e[0] + 0.1 * e[2]
    near_the_mean = e[0] + e[1]
    candidates = np.stack([near_one_item, near_the_mean]) / np.linalg.norm([near_one_item, near_the_mean],
                                                                          axis=1, keepdims=True)
    params = ClickParams(bias=-3.0, similarity_weight=5.0, popularity_weight=0.3, position_decay=0.1,
                         cold_start_damping=0.8)
    p = click_probability(candidates, history, mask, np.zeros(2), np.zeros(2), params)
    max_sim, mean_sim = history_similarities(candidates, history, mask)
    assert p[0] > p[1] + 0.2
    assert mean_sim[1] > mean_sim[0]  # a mean-pooling model would rank them the other way round
    np.testing.assert_allclose(max_sim, [np.cos(np.arctan(0.1)), np.sqrt(0.5)], rtol=1e-5)


def test_click_probability_has_position_popularity_and_cold_start_effects():
    dim = 8
    e = np.eye(dim, dtype=np.float32)
    params = ClickParams(bias=-3.0, similarity_weight=5.0, popularity_weight=0.3, position_decay=0.1,
                         cold_start_damping=0.8)
    empty = np.zeros((1, 3, dim), dtype=np.float32), np.zeros((1, 3), dtype=bool)
    interests = e[[0]][None], np.ones((1, 1), dtype=bool)
    candidates = np.stack([e[0], e[0], e[0], e[4]])
    p = click_probability(candidates, *empty, np.array([0.0, 0.0, 1.0, 0.0]), np.array([0, 5, 0, 0]), params,
                          *interests)
    assert p[0] > p[1]  # lower slot, fewer clicks
    assert p[2] > p[0]  # more popular, more clicks
    assert p[0] > p[3]  # without history: near an interest beats far from all of them
    no_interests = click_probability(candidates, *empty, np.zeros(4), np.zeros(4), params)
    np.testing.assert_allclose(no_interests, 1 / (1 + np.exp(3.0)), rtol=1e-5)


def test_truth_similarities_match_the_clicks_in_the_raw_logs(generated, audit, truth):
    """Recompute max_sim and mean_sim from the raw clicks before each impression, as a ranker sees them."""
    cfg, _, _ = generated
    _, accepted = audit
    impressions, items, _ = truth
    vectors = dict(zip(items["item_id"], np.stack(items["vector"].to_numpy())))
    clicks = accepted[accepted["event_type"] == "click"].sort_values("ts_ms", kind="stable")
    history = {user: (g["ts_ms"].to_numpy(), g["item_id"].to_list()) for user, g in clicks.groupby("user_id")}
    sample = impressions.sample(2000, random_state=0)
    with_history = 0
    for row in sample.itertuples():
        times, clicked = history.get(row.user_id, (np.array([], dtype=np.int64), []))
        before = clicked[: np.searchsorted(times, row.ts.value // 1_000_000)][-cfg.generate.history_window:]
        if not before:
            assert pd.isna(row.max_sim) and pd.isna(row.mean_sim)
            continue
        with_history += 1
        recent = np.stack([vectors[i] for i in before])
        mean = recent.mean(axis=0)
        assert (recent @ vectors[row.item_id]).max() == pytest.approx(row.max_sim, abs=1e-4)
        assert mean @ vectors[row.item_id] / np.linalg.norm(mean) == pytest.approx(row.mean_sim, abs=1e-4)
    assert with_history > len(sample) / 3


def logistic_fit(features: np.ndarray, labels: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Maximum-likelihood logistic regression weights by Newton's method."""
    w = np.zeros(features.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-features @ w))
        hessian = (features * (p * (1 - p))[:, None]).T @ features
        w += np.linalg.solve(hessian, features.T @ (labels - p))
    return w


def test_max_similarity_drives_clicks_beyond_mean_similarity(truth):
    impressions, items, _ = truth
    seen = impressions.dropna(subset=["max_sim", "mean_sim"])

    # Inside each band of similarity to the history mean, the nearest single item still matters.
    for _, band in seen.groupby(pd.qcut(seen["mean_sim"], 5, labels=False)):
        upper = band["max_sim"] > band["max_sim"].median()
        assert band.loc[upper, "clicked"].mean() > 1.5 * band.loc[~upper, "clicked"].mean()

    # Fitted on the clicks, with both similarities side by side: max_sim carries the
    # weight and mean_sim adds next to nothing once max_sim is known.
    log_pop = np.log(items.set_index("item_id")["popularity"])
    pop_z = ((log_pop - log_pop.mean()) / log_pop.std()).reindex(seen["item_id"]).to_numpy()
    features = np.column_stack([np.ones(len(seen)), seen["max_sim"], seen["mean_sim"], pop_z, seen["position"]])
    _, w_max, w_mean, w_pop, w_position = logistic_fit(features, seen["clicked"].to_numpy(dtype=float))
    assert w_max > 3 and abs(w_mean) < w_max / 4
    assert w_pop > 0 and w_position < 0


def test_truth_shows_position_bias_and_popularity(truth):
    impressions, items, _ = truth
    by_position = impressions.groupby("position")["clicked"].mean()
    assert by_position.iloc[0] > 1.4 * by_position.iloc[-1]
    assert np.corrcoef(by_position.index, by_position.to_numpy())[0, 1] < -0.9
    popularity = impressions["item_id"].map(dict(zip(items["item_id"], items["popularity"])))
    quintile = pd.qcut(np.log(popularity), 5, labels=False)
    by_popularity = impressions.groupby(quintile)["clicked"].mean()
    assert by_popularity.iloc[-1] > 1.4 * by_popularity.iloc[0]


def test_clicks_are_drawn_from_the_recorded_probabilities(truth):
    impressions, _, _ = truth
    p = impressions["p_click"].to_numpy(dtype=float)
    clicked = impressions["clicked"].to_numpy()
    assert 0.04 <= clicked.mean() <= 0.15
    assert abs(clicked.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


def test_a_rerun_replaces_the_previous_output(tmp_path):
    generate(tmp_path, *TINY, "generate.days=3")
    manifest = generate(tmp_path, *TINY, "generate.days=2")[1]
    assert sorted(p.name for p in (tmp_path / "raw" / "events").iterdir()) == [f"dt={d}" for d in manifest["days"]]
    assert len(list((tmp_path / "truth" / "impressions").iterdir())) == 2


def test_items_of_one_brand_are_closer_than_items_of_one_category(generated, truth):
    """The planted hierarchy, read back from the raw catalogue (the brand a user sees) and
    the truth's vectors: brand, then category, then the rest; each item still its own point."""
    cfg, manifest, _ = generated
    catalogue = pd.concat(pd.read_json(p, lines=True) for p in Path(cfg.table_path("raw_items")).glob("*.jsonl.gz"))
    items = truth[1].merge(catalogue[["item_id", "brand"]].rename(columns={"brand": "brand_name"}), on="item_id")
    vectors = np.stack(items["vector"].to_numpy())
    cos = vectors @ vectors.T
    same_cat = items["category"].to_numpy()[:, None] == items["category"].to_numpy()[None, :]
    same_brand = items["brand_name"].to_numpy()[:, None] == items["brand_name"].to_numpy()[None, :]
    other = ~np.eye(len(items), dtype=bool)
    brand_mean = cos[same_brand & other].mean()
    category_mean = cos[same_cat & ~same_brand].mean()
    assert brand_mean > category_mean + 0.1 > cos[~same_cat].mean() + 0.1
    assert cos[same_brand & other].max() < 0.999  # no two items of a brand are the same point
    # The residual is at least as large as the brand's offset, and the manifest says so.
    assert items["residual_sq_norm"].mean() > items["brand_sq_norm"].mean()
    hierarchy = manifest["hierarchy"]
    assert hierarchy["cosine_same_brand"] > hierarchy["cosine_same_category_other_brand"] > hierarchy["cosine_other_category"]
    assert abs(hierarchy["residual_sq_norm"] - items["residual_sq_norm"].mean()) < 0.1


def test_impossible_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="generate.items"):
        generate(tmp_path, *TINY, "generate.items=5")
    with pytest.raises(ConfigError, match="generate.late_rate"):
        generate(tmp_path, *TINY, "generate.late_rate=1.5")
    with pytest.raises(ConfigError, match="generate.item_spread"):
        generate(tmp_path, *TINY, "generate.brand_spread=1.2", "generate.item_spread=1.0")
