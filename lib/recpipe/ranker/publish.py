"""Logging the attention ranker as a self-contained MLflow pyfunc and registering it.

What travels with the model:
- code: a copy of the serving modules of `recpipe.serving` (`__init__`, `layers/`, `model`,
  `scoring`, `pyfunc`) as the top-level package `ranker` in `code_paths`, and
  `pyfunc_entry.py` as the models-from-code entry point;
- artifacts: `weights.pt` (model config + state dict) and `vocabulary.npz` (item_id →
  item_idx, item_idx → cat_idx, the item feature snapshot); the normalisation statistics
  are buffers of the network, so they are in the weights;
- pinned requirements (torch, numpy, pandas, mlflow), a signature and an input example.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.resources
import sys
import tempfile
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe import io
from recpipe.config import Config, RankerConfig
from recpipe.etl.dictionaries import USERS, read_snapshot
from recpipe.names import CHALLENGER, RANKER_MODEL
from recpipe.ranker import checkpoints
from recpipe.schema import BRAND_IDX, CAT_IDX, ITEM_DENSE, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.serving.pyfunc import VOCABULARY, WEIGHTS

PACKAGE = importlib.resources.files("recpipe.serving")
SERVING_CODE = ("__init__.py", "layers", "columns.py", "model.py", "scoring.py", "pyfunc.py")
ENTRY = "pyfunc_entry.py"


def stage_model_code(folder: Path) -> Path:
    """Copy the serving modules into `folder/ranker`; returns that package folder. Read as
    package resources, so that it also works from the zipped wheel spark-submit ships."""
    target = folder / "ranker"
    target.mkdir(parents=True)
    for name in SERVING_CODE:
        _copy_resource(PACKAGE / name, target / name)
    return target


def _copy_resource(source: Traversable, target: Path) -> None:
    if source.is_dir():
        target.mkdir()
        for child in source.iterdir():
            if child.name != "__pycache__":
                _copy_resource(child, target / child.name)
    else:
        target.write_bytes(source.read_bytes())


@contextlib.contextmanager
def importable(folder: Path) -> Iterator[None]:
    """Make the staged `ranker` package importable for the duration, then forget it."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for module in [m for m in sys.modules if m == "ranker" or m.startswith("ranker.")]:
            del sys.modules[module]


def requirements() -> list[str]:
    """The serving environment, pinned to the versions that trained the model."""
    import mlflow
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([
            ColSpec("string", "item_id"),
            ColSpec(Array("string"), "history"),
            ColSpec("string", "user_id", required=False),
            ColSpec(Array("double"), "user_dense", required=False),
            ColSpec(Array("double"), "item_dense", required=False),
            ColSpec("double", "als_score", required=False),
        ]),
        outputs=Schema([ColSpec("double", "score")]),
    )


def log_ranker_model(weights: str, vocabulary: str, input_example: pd.DataFrame, registered_name: str | None,
                     name: str = RANKER_MODEL) -> dict[str, Any]:
    """Log the pyfunc in the active run; register it and give the new version the
    `challenger` alias when `registered_name` is set.

    Returns:
        `model_uri` and, when registered, `version`.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        code = stage_model_code(Path(tmp))
        entry = Path(tmp) / ENTRY
        _copy_resource(PACKAGE / ENTRY, entry)
        with importable(Path(tmp)):  # MLflow runs the entry file while saving, as it will when loading
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(entry),
                code_paths=[str(code)],
                artifacts={WEIGHTS: weights, VOCABULARY: vocabulary},
                signature=signature(),
                input_example=input_example,
                pip_requirements=requirements(),
                registered_model_name=registered_name,
            )
    out = {"model_uri": info.model_uri}
    if registered_name:
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(registered_name, CHALLENGER, version)
        out["version"] = version
    return out


def publish(spark: SparkSession, cfg: Config, date: dt.date, rc: RankerConfig, result: Mapping,
            vocabulary: pd.DataFrame, test: Mapping[str, np.ndarray] | None) -> dict[str, str]:
    """Log the attention model as a pyfunc into the active run; register it as a challenger."""
    from recpipe.serving.scoring import dense_column, save_vocabulary, save_weights

    state = checkpoints.load(result["checkpoint"])
    dense_dim = int(state["model_config"]["item_dense_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        weights, vocab = f"{tmp}/weights.pt", f"{tmp}/vocabulary.npz"
        save_weights(weights, state["model_config"], state["model_state"])
        save_vocabulary(vocab, vocabulary[ITEM_ID].to_numpy(), vocabulary[ITEM_IDX].to_numpy(),
                        vocabulary[CAT_IDX].to_numpy(),
                        dense_column(vocabulary, ITEM_DENSE, len(vocabulary), dense_dim),
                        brand_idx=vocabulary[BRAND_IDX].to_numpy())
        example = input_example(spark, cfg, date, vocabulary, test)
        return log_ranker_model(weights, vocab, example, RANKER_MODEL if rc.register_model else None)


def input_example(spark: SparkSession, cfg: Config, date: dt.date, vocabulary: pd.DataFrame,
                  test: Mapping[str, np.ndarray] | None, rows: int = 3) -> pd.DataFrame:
    """A few test rows as a consumer would send them: string ids, lists, dense features."""
    from recpipe.serving.consumer import consumer_frame, id_lookup

    names = id_lookup(vocabulary[ITEM_IDX].to_numpy(), vocabulary[ITEM_ID].astype(str).to_numpy())
    if test is None or len(test["label"]) == 0:
        some = [n for n in names if n != "unknown"][:2]
        return pd.DataFrame({ITEM_ID: some[:1], "history": [some[1:]]})
    picked = np.argsort(-test["hist_len"], kind="stable")[:rows]
    users = _user_ids(spark, cfg, date, [int(u) for u in test["user_idx"][picked]])
    return consumer_frame(test, names, picked, users)


def _user_ids(spark: SparkSession, cfg: Config, date: dt.date, indexes: list[int]) -> dict[int, str]:
    day = io.latest_day(cfg, "dim_users", date)
    if day is None:
        return {}
    rows = read_snapshot(spark, cfg, USERS, day).where(F.col(USER_IDX).isin(indexes)).collect()
    return {int(r[USER_IDX]): r[USER_ID] for r in rows}
