"""The hidden world: categories, items and users, with their latent vectors.

Everything here is drawn once per seed and never changes across days: category centres
(unit vectors), brands inside each category, items, heavy-tailed item popularity, prices
per category, and each user's interest categories.

The catalogue is hierarchical, as real ones are. An item's hidden vector is

    unit(category centre + brand offset + item residual)

with the centre of norm 1, the brand offset of norm about `generate.brand_spread` and the
residual of norm about `generate.item_spread` (each drawn isotropically). Items of one
brand are closer than items of one category (cosine about (1 + b^2) / (1 + b^2 + r^2)
against 1 / (1 + b^2 + r^2)), so brand and category are informative side information;
the residual is at least as large as the brand offset (`check_hierarchy`), so which item,
not only which brand, still matters. `item_truth` records each item's parts.
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
        brand_offsets: (C, B, D) float32 offset of each (category, brand) from its centre.
        item_residuals: (I, D) float32 each item's own part, before normalisation.
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
    brand_offsets: np.ndarray
    item_residuals: np.ndarray
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
    check_hierarchy(gen)
    centres = unit_rows(rng.standard_normal((gen.categories, gen.latent_dim)))
    item_category = draw_item_categories(gen, rng)
    item_brand = rng.integers(0, gen.brands_per_category, size=gen.items).astype(np.int32)
    brand_offsets = isotropic(rng, (gen.categories, gen.brands_per_category, gen.latent_dim), gen.brand_spread)
    residuals = isotropic(rng, (gen.items, gen.latent_dim), gen.item_spread)
    item_vectors = unit_rows(centres[item_category] + brand_offsets[item_category, item_brand] + residuals)
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
        item_vectors=item_vectors.astype(np.float32),
        item_popularity=popularity,
        item_popularity_z=popularity_z,
        item_brand=item_brand,
        brand_offsets=brand_offsets.astype(np.float32),
        item_residuals=residuals.astype(np.float32),
        item_price=draw_prices(gen, item_category, rng),
        user_interests=draw_interests(gen, rng),
        items_by_category=by_category,
        category_popularity_bounds=bounds,
        category_popularity_cum=cum,
    )


def check_hierarchy(gen) -> None:
    """ConfigError unless the spreads keep both levels of the hierarchy meaningful."""
    if gen.brand_spread < 0:
        raise ConfigError(f"generate.brand_spread={gen.brand_spread} must be >= 0")
    if gen.item_spread < gen.brand_spread:
        raise ConfigError(f"generate.item_spread={gen.item_spread} must be at least generate.brand_spread="
                          f"{gen.brand_spread}: an item's own residual must matter as much as its brand")


def isotropic(rng: np.random.Generator, shape: tuple, norm: float) -> np.ndarray:
    """Gaussian vectors along the last axis whose expected squared norm is norm^2."""
    return rng.standard_normal(shape) * (norm / np.sqrt(shape[-1]))


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
