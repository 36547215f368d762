"""The planted truth: what evaluation and benchmarks compare the pipeline against.

The pipeline never reads these tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recpipe.generate.sessions import IMPRESSION
from recpipe.generate.tokens import ID_KIND_EVENT, ID_KIND_REQUEST, Naming, category_names
from recpipe.generate.world import World

TRUTH_SOURCE_COLUMNS = ("request", "user", "item", "position", "ts_ms", "p_click", "clicked", "max_sim", "mean_sim")


def impression_truth(events: pd.DataFrame, seq: np.ndarray, day_index: int, naming: Naming) -> pa.Table:
    """One row per clean impression of the day with its true click probability.

    `max_sim`/`mean_sim` are the candidate's cosine to the nearest recent clicked item
    and to the mean of those items; null while the user has no clicks yet.
    """
    is_imp = events["etype"].to_numpy() == IMPRESSION
    imps = events.loc[is_imp, list(TRUTH_SOURCE_COLUMNS)]
    max_sim = imps["max_sim"].to_numpy(dtype=np.float32)
    mean_sim = imps["mean_sim"].to_numpy(dtype=np.float32)
    return pa.table({
        "event_id": naming.hashed_ids("e", ID_KIND_EVENT, day_index, seq[is_imp]),
        "request_id": naming.hashed_ids("r", ID_KIND_REQUEST, day_index, imps["request"].to_numpy()),
        "user_id": naming.user_ids(imps["user"].to_numpy()),
        "item_id": naming.item_ids(imps["item"].to_numpy()),
        "position": pa.array(imps["position"].to_numpy(), type=pa.int32()),
        "ts": pa.array(imps["ts_ms"].to_numpy(dtype=np.int64), type=pa.timestamp("ms", tz="UTC")),
        "p_click": pa.array(imps["p_click"].to_numpy(dtype=np.float32)),
        "clicked": pa.array(imps["clicked"].to_numpy(dtype=bool)),
        "max_sim": pa.array(max_sim, mask=np.isnan(max_sim)),
        "mean_sim": pa.array(mean_sim, mask=np.isnan(mean_sim)),
    })


def item_truth(world: World, naming: Naming) -> pa.Table:
    """Each item's category, brand, popularity and hidden vector, with how much of the
    vector is its category's centre, its brand's offset and its own residual: the squared
    norms of the three parts before normalisation (the centre's is 1)."""
    dim = world.item_vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(world.item_vectors.ravel()), dim)
    offsets = world.brand_offsets[world.item_category, world.item_brand]
    return pa.table({
        "item_id": naming.item_ids(np.arange(world.n_items)),
        "category": category_names(len(world.category_centres)).take(pa.array(world.item_category)),
        "brand": pa.array(world.item_brand),
        "popularity": pa.array(world.item_popularity),
        "vector": pc.cast(vectors, pa.list_(pa.float32())),
        "brand_sq_norm": pa.array(np.square(offsets).sum(axis=1)),
        "residual_sq_norm": pa.array(np.square(world.item_residuals).sum(axis=1)),
    })


def hierarchy_summary(world: World, pairs: int = 20_000, seed: int = 0) -> dict[str, float]:
    """For the manifest: the mean squared norm of the brand offsets and the residuals, and
    the mean cosine of random item pairs of one brand, of one category (other brands)
    and of other categories."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, world.n_items, size=(2, pairs))
    cos = (world.item_vectors[a] * world.item_vectors[b]).sum(axis=1)
    same_cat = world.item_category[a] == world.item_category[b]
    same_brand = same_cat & (world.item_brand[a] == world.item_brand[b])
    offsets = world.brand_offsets[world.item_category, world.item_brand]

    def mean(mask: np.ndarray) -> float:
        return float(cos[mask & (a != b)].mean()) if (mask & (a != b)).any() else float("nan")

    return {
        "brand_sq_norm": float(np.square(offsets).sum(axis=1).mean()),
        "residual_sq_norm": float(np.square(world.item_residuals).sum(axis=1).mean()),
        "cosine_same_brand": mean(same_brand),
        "cosine_same_category_other_brand": mean(same_cat & ~same_brand),
        "cosine_other_category": mean(~same_cat),
    }


def user_truth(world: World, gen, naming: Naming) -> pa.Table:
    """Regular users with their interest categories, then every day's bot accounts."""
    n_bots = gen.days * gen.bot_users_per_day
    is_set = world.user_interests >= 0
    counts = np.concatenate([is_set.sum(axis=1), np.zeros(n_bots, dtype=np.int64)])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    interests = pa.ListArray.from_arrays(pa.array(offsets), pa.array(world.user_interests[is_set], type=pa.int32()))
    return pa.table({
        "user_id": naming.user_ids(np.arange(world.n_users + n_bots)),
        "interests": interests,
        "is_bot": pa.array(np.arange(world.n_users + n_bots) >= world.n_users),
    })
