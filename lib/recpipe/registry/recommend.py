"""`recpipe recommend --user U [--date D]`: one user's recommendations, and the history
items the attention looked at most for each.

The list comes from `lake/recommendations/dt=D`; the explanation re-scores those rows with
the version that produced them (its `model_version`), reading the attention weights from
the network inside the registered pyfunc.
"""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pandas as pd
import torch
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe import io
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.names import RANKER_MODEL
from recpipe.registry.promote import client_for
from recpipe.registry.score import MODEL_VERSION, RANK, SCORE, candidate_rows, model_input
from recpipe.schema import ITEM_ID, USER_ID

TOP_HISTORY = 3  # history items shown per recommendation


def recommend(spark: SparkSession, cfg: Config, user_id: str, date: dt.date | None) -> pd.DataFrame:
    """(rank, item_id, score, because): `because` lists history items with their weights."""
    date = date or io.latest_day(cfg, "recommendations", dt.date.max)
    if date is None or not io.table_exists(cfg, "recommendations", date):
        raise DataError(f"recommend: no recommendations{' for ' + date.isoformat() if date else ''} at "
                        f"{cfg.table_path('recommendations')}; run `recpipe score`")
    listed = (io.read_day(spark, cfg, "recommendations", date).where(F.col(USER_ID) == user_id)
              .orderBy(RANK).toPandas())
    if listed.empty:
        raise DataError(f"recommend: user {user_id!r} has no recommendations for {date}")
    rows = (candidate_rows(spark, cfg, date, exclude_history=False, user_ids=[user_id])
            .where(F.col(ITEM_ID).isin(listed[ITEM_ID].tolist()))
            .toPandas()
            .set_index(ITEM_ID)
            .loc[listed[ITEM_ID]]
            .reset_index())
    weights, history = attention_weights(cfg, str(listed[MODEL_VERSION].iloc[0]), rows)
    listed["because"] = [strongest(history[i], weights[i]) for i in range(len(listed))]
    listed.attrs["date"] = date
    return listed[[RANK, ITEM_ID, SCORE, MODEL_VERSION, "because"]]


def attention_weights(cfg: Config, version: str, rows: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
    """(rows, L) attention weights of `version` and the item id at each history position."""
    import mlflow

    client_for(cfg)  # sets the tracking URI that models:/ resolves against
    scorer = mlflow.pyfunc.load_model(f"models:/{RANKER_MODEL}/{version}").unwrap_python_model().scorer
    inputs = scorer.inputs(model_input(rows))
    with torch.no_grad():
        _, weights = scorer.model.forward_with_weights(*inputs)
    name_of = dict(zip(scorer.item_idx.tolist(), scorer.index.tolist()))
    # The version's own code says where the history sits among the network's inputs.
    names = list(sys.modules[type(scorer.model).__module__].INPUTS)
    history = [[name_of.get(int(i), "") for i in row] for row in inputs[names.index("hist_items")].numpy()]
    return weights.float().numpy(), history


def strongest(history: list[str], weights: np.ndarray, top: int = TOP_HISTORY) -> str:
    order = [i for i in np.argsort(-weights, kind="stable") if history[i] and weights[i] > 0][:top]
    return ", ".join(f"{history[i]} ({weights[i]:.2f})" for i in order) or "(no history)"
