"""The hidden world: categories, items and users, with their latent vectors.

Everything here is drawn once per seed and never changes across days: category centres
(unit vectors), items scattered around their category's centre, heavy-tailed item
popularity, brands and prices per category, and each user's interest categories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recpipe.errors import ConfigError

# Streams of the seed; each part of the generator draws from its own so that changing
# one part (say, the fault rates) never shifts the numbers another part draws.
STREAM_WORLD = 1
STREAM_DAY = 2
STREAM_RENDER = 3
STREAM_FAULTS = 4
STREAM_BOTS = 5
STREAM_SHUFFLE = 6


def substream(seed: int, *keys: int) -> np.random.Generator:
    """An independent random generator for `seed` and a path of integer keys."""
    return np.random.default_rng([seed, *keys])


@dataclass(frozen=True)
class World:
    """Catalogue and users with their hidden vectors; arrays are indexed by item/user.

    Attributes:
        category_centres: (C, D) float32 unit vectors.
        item_category: (I,) int32 category of each item.
        item_vectors: (I, D) float32 unit vectors.
        item_popularity: (I,) float64, positive, heavy-tailed.
        item_popularity_z: (I,) float32 standardised log popularity.
        item_brand: (I,) int32 brand number inside the item's category.
        item_price: (I,) float64 catalogue price, rounded to cents.
        user_interests: (U, K) int32 interest categories, -1 where a user has fewer than K.
        items_by_category: (I,) int32 item indexes sorted by category (stable).
        category_popularity_bounds: (C + 1,) float64 cumulative popularity of
            `items_by_category` at each category boundary, for sampling inside a category.
        category_popularity_cum: (I,) float64 cumulative popularity along `items_by_category`.
    """

    category_centres: np.ndarray
    item_category: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray
    item_popularity_z: np.ndarray
    item_brand: np.ndarray
    item_price: np.ndarray
    user_interests: np.ndarray
    items_by_category: np.ndarray
    category_popularity_bounds: np.ndarray
    category_popularity_cum: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.item_category)

    @property
    def n_users(self) -> int:
        return len(self.user_interests)

    def interest_vectors(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interest centres of some users: vectors (N, K, D) and their mask (N, K)."""
        interests = self.user_interests[users]
        mask = interests >= 0
        return self.category_centres[np.where(mask, interests, 0)], mask


def build_world(gen, rng: np.random.Generator) -> World:
    """Draw the catalogue and the users for a `GenerateConfig`."""
    centres = unit_rows(rng.standard_normal((gen.categories, gen.latent_dim)))
    item_category = draw_item_categories(gen, rng)
    # Noise of norm ~item_spread around the centre: items of one category are alike
    # (cosine ~ 1 / (1 + spread^2)) but each is its own point, so "which item" matters.
    noise = rng.standard_normal((gen.items, gen.latent_dim)) * (gen.item_spread / np.sqrt(gen.latent_dim))
    item_vectors = unit_rows(centres[item_category] + noise).astype(np.float32)
    popularity = rng.lognormal(0.0, gen.popularity_sigma, size=gen.items)
    log_pop = np.log(popularity)
    popularity_z = ((log_pop - log_pop.mean()) / log_pop.std()).astype(np.float32)
    by_category = np.argsort(item_category, kind="stable").astype(np.int32)
    cum = np.cumsum(popularity[by_category])
    counts = np.bincount(item_category, minlength=gen.categories)
    bounds = np.concatenate([[0.0], cum[np.cumsum(counts) - 1]])
    return World(
        category_centres=centres.astype(np.float32),
        item_category=item_category,
        item_vectors=item_vectors,
        item_popularity=popularity,
        item_popularity_z=popularity_z,
        item_brand=rng.integers(0, gen.brands_per_category, size=gen.items).astype(np.int32),
        item_price=draw_prices(gen, item_category, rng),
        user_interests=draw_interests(gen, rng),
        items_by_category=by_category,
        category_popularity_bounds=bounds,
        category_popularity_cum=cum,
    )


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def draw_item_categories(gen, rng: np.random.Generator) -> np.ndarray:
    """(I,) category of each item; every category gets at least one item."""
    if gen.items < gen.categories:
        raise ConfigError(f"generate.items ({gen.items}) must be at least generate.categories ({gen.categories})")
    extra = rng.integers(0, gen.categories, size=gen.items - gen.categories)
    return rng.permutation(np.concatenate([np.arange(gen.categories), extra])).astype(np.int32)


def draw_prices(gen, item_category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lognormal prices: a median per category, then items spread around it."""
    category_median = gen.price_median * rng.lognormal(0.0, gen.price_sigma, size=gen.categories)
    prices = category_median[item_category] * rng.lognormal(0.0, gen.price_sigma, size=len(item_category))
    return np.maximum(np.round(prices, 2), 0.01)


def draw_interests(gen, rng: np.random.Generator) -> np.ndarray:
    """(U, interests_max) distinct interest categories per user, -1 padded."""
    ranks = np.argsort(rng.random((gen.users, gen.categories)), axis=1)[:, : gen.interests_max]
    n_interests = rng.integers(gen.interests_min, gen.interests_max + 1, size=gen.users)
    keep = np.arange(gen.interests_max)[None, :] < n_interests[:, None]
    return np.where(keep, ranks, -1).astype(np.int32)


def sample_candidates(world: World, users: np.ndarray, feed_size: int, interest_share: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Feed candidates (N, feed_size): some from the user's interests, the rest global.

    Both kinds are drawn in proportion to popularity, inside a category or over the whole
    catalogue, by inverting the cumulative popularity (one searchsorted for all draws).
    """
    n = len(users)
    interests = world.user_interests[users]
    n_interests = (interests >= 0).sum(axis=1)
    pick = (rng.random((n, feed_size)) * n_interests[:, None]).astype(np.int64)
    category = np.take_along_axis(interests, pick, axis=1)
    lo = world.category_popularity_bounds[category]
    hi = world.category_popularity_bounds[category + 1]
    total = world.category_popularity_cum[-1]
    from_interest = rng.random((n, feed_size)) < interest_share
    u = rng.random((n, feed_size))
    target = np.where(from_interest, lo + u * (hi - lo), u * total)
    pos = np.searchsorted(world.category_popularity_cum, target, side="right")
    return world.items_by_category[np.minimum(pos, world.n_items - 1)]
