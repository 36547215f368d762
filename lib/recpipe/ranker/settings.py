"""The ranker's settings checked, and the network's configuration for the data of day D."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping

from recpipe.config import RankerConfig
from recpipe.etl.feature_names import CATEGORY_SHARE_PREFIX
from recpipe.errors import ConfigError
from recpipe.ranker.inputs import InputStats
from recpipe.serving.layers.attention import SIMILARITIES, WEIGHTINGS
from recpipe.serving.layers.mlp import ACTIVATIONS
from recpipe.serving.model import RankerModelConfig

log = logging.getLogger("recpipe.ranker")

ATTENTION, MEAN = "attention", "mean"  # the networks trained: target attention and the mean-pooling BaseModel


def check_config(rc: RankerConfig) -> None:
    """Raise ConfigError naming the `ranker.*` key whose value cannot work."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"ranker.{key}: {why}")

    if rc.activation not in ACTIVATIONS:
        raise bad("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {rc.activation!r}")
    if rc.attention_similarity not in SIMILARITIES:
        raise bad("attention_similarity", f"must be one of {', '.join(SIMILARITIES)}, got {rc.attention_similarity!r}")
    if rc.position_buckets < 0 or rc.position_buckets == 1:
        raise bad("position_buckets", "must be 0 (no tower) or at least 2 (unknown and one slot)")
    if rc.early_stopping_patience < 0:
        raise bad("early_stopping_patience", "must be at least 0")
    if rc.attention_weighting not in WEIGHTINGS:
        raise bad("attention_weighting", f"must be one of {', '.join(WEIGHTINGS)}, got {rc.attention_weighting!r}")
    for key in ("item_embedding_dim", "cat_embedding_dim", "batch_size", "epochs", "num_processes",
                "eval_batch_size", "reader_workers", "input_rows_per_file"):
        if getattr(rc, key) < 1:
            raise bad(key, "must be at least 1")
    if rc.batch_size % rc.num_processes:
        raise bad("batch_size", f"{rc.batch_size} does not split evenly across num_processes={rc.num_processes}")
    if not 0.0 <= rc.dropout < 1.0:
        raise bad("dropout", "must be in [0, 1)")


def network_settings(rc: RankerConfig) -> dict[str, Any]:
    """The RankerModelConfig fields that come from the `ranker:` section."""
    return dict(attention_weighting=rc.attention_weighting, item_embedding_dim=rc.item_embedding_dim,
                cat_embedding_dim=rc.cat_embedding_dim, attention_hidden=tuple(rc.attention_hidden),
                head_hidden=tuple(rc.head_hidden), activation=rc.activation, dropout=rc.dropout,
                use_als_score=rc.use_als_score, embedding_init_std=rc.embedding_init_std,
                item_init_std=rc.item_init_std, position_buckets=rc.position_buckets,
                attention_similarity=rc.attention_similarity, pooled_similarity=rc.pooled_similarity)


def model_config(rc: RankerConfig, stats: InputStats, meta: Mapping, name: str, date: dt.date) -> RankerModelConfig:
    """The network for `name` (attention or mean pooling) on the data of day D."""
    return RankerModelConfig(
        item_vocab=stats.item_vocab,
        cat_vocab=stats.cat_vocab,
        brand_vocab=stats.brand_vocab if rc.use_brand else 0,
        history_length=int(meta["history_length"]),
        user_dense_dim=len(meta["user_dense_features"]),
        item_dense_dim=len(meta["item_dense_features"]),
        **category_shares(meta["user_dense_features"]),
        pooling=name,
        **{**network_settings(rc), "use_als_score": rc.use_als_score and als_scores_in_training(stats, date)},
        user_dense_mean=stats.user_dense_mean,
        user_dense_std=stats.user_dense_std,
        item_dense_mean=stats.item_dense_mean,
        item_dense_std=stats.item_dense_std,
        als_score_mean=stats.als_score_mean,
        als_score_std=stats.als_score_std,
        extra={"date": date.isoformat(), "user_dense_features": list(meta["user_dense_features"]),
               "item_dense_features": list(meta["item_dense_features"])},
    )


def category_shares(user_dense_features: list[str]) -> dict[str, int]:
    """Where the impression shares per category start in `user_dense`, and how many there are."""
    at = [i for i, name in enumerate(user_dense_features) if name.startswith(CATEGORY_SHARE_PREFIX)]
    return {"category_share_start": at[0] if at else -1, "category_share_width": len(at)}


def als_scores_in_training(stats: InputStats, date: dt.date) -> bool:
    """Whether any train day had an ALS run on or before it.

    Without one every train row has als_score 0.0 while the test rows (scored by D's run)
    do not: the feature would be learnt as a constant and then fed something else, so it
    is left out of the network instead (run the als stage for the train days to use it).
    """
    covered = [day for day, run in stats.als_days.items() if day < date.isoformat() and run]
    if not covered:
        log.warning("no ALS run on or before any train day of %s: the network does not use als_score", date)
    return bool(covered)
