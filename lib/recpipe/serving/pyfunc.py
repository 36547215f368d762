"""The registered model: an MLflow pyfunc over `CandidateScorer`.

Logged as "models from code": MLflow stores `pyfunc_entry.py` with the model and runs
it when loading; `code_paths` carry this package (as the top-level package `ranker`), so
loading needs torch, numpy, pandas and mlflow, and never recpipe.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from .scoring import CandidateScorer

WEIGHTS, VOCABULARY = "weights", "vocabulary"  # names of the artifacts


class AttentionRankerPyfunc(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame of candidates (see `ranker.scoring`); output: a `score` Series."""

    def load_context(self, context) -> None:
        self.scorer = CandidateScorer.from_files(context.artifacts[WEIGHTS], context.artifacts[VOCABULARY])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return pd.Series(self.scorer.score(model_input), index=model_input.index, name="score")
