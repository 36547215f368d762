"""The non-learned rankers every model is compared with: the ALS score and item popularity."""

from __future__ import annotations

import datetime as dt
from typing import Mapping

import numpy as np

from recpipe.config import RankerConfig
from recpipe.errors import ConfigError


def baseline_scores(arrays: Mapping[str, np.ndarray], popularity_index: int) -> dict[str, np.ndarray]:
    """The scores of the non-learned rankers: the ALS score and the popularity feature."""
    return {
        "als": arrays["als_score"].astype(np.float64),
        "popularity": arrays["item_dense"][:, popularity_index].astype(np.float64),
    }


def popularity_index(rc: RankerConfig, meta: Mapping, date: dt.date) -> int:
    """Position of `ranker.popularity_feature` in `item_dense` (names from _meta.json)."""
    features = list(meta["item_dense_features"])
    if rc.popularity_feature not in features:
        raise ConfigError(f"ranker.popularity_feature: {rc.popularity_feature!r} is not an item dense feature "
                          f"of the samples of {date} (they have {', '.join(features)})")
    return features.index(rc.popularity_feature)
