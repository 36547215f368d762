"""MLflow runs this file to build the registered model (models from code).

The ranker package travels in the model's `code_paths` and is importable as `ranker`.
"""

import mlflow
from ranker.pyfunc import AttentionRankerPyfunc

mlflow.models.set_model(AttentionRankerPyfunc())
