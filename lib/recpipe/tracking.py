"""Where MLflow runs go: the config, else $MLFLOW_TRACKING_URI, else SQLite under the root.

Spark executors and DDP ranks do not inherit the driver's MLflow settings, so the
resolved URI is passed to them explicitly.
"""

from __future__ import annotations

import os

from recpipe.config import Config
from recpipe.paths import has_scheme, join_uri


# $MLFLOW_TRACKING_URI as this process was started with. mlflow.set_tracking_uri also writes
# the variable (for subprocesses to inherit), so its live value can be the store of another
# root this process logged to before: a second config must not send its runs there.
STARTED_WITH_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "")


def tracking_uri(cfg: Config) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if STARTED_WITH_TRACKING_URI:
        return STARTED_WITH_TRACKING_URI
    if has_scheme(cfg.paths.root) and not cfg.paths.root.startswith("file://"):
        # A SQLite file cannot live on hdfs:// or s3a://; such roots need a tracking server.
        raise_missing_server(cfg)
    # sqlite:/// plus an absolute path gives the four slashes SQLAlchemy wants.
    return "sqlite:///" + join_uri(local_root(cfg), "mlflow", "mlflow.db")


def artifact_root(cfg: Config) -> str:
    """Artifact location for experiments created against the default SQLite store."""
    if cfg.mlflow.artifact_root:
        return cfg.mlflow.artifact_root
    return "file://" + join_uri(local_root(cfg), "mlflow", "artifacts")


def local_root(cfg: Config) -> str:
    root = cfg.paths.root
    return root[len("file://"):] if root.startswith("file://") else root


def raise_missing_server(cfg: Config) -> None:
    from recpipe.errors import ConfigError

    raise ConfigError(
        f"paths.root is {cfg.paths.root}: set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) "
        "to a tracking server, SQLite needs a local root"
    )


def start_run(cfg: Config, experiment: str, run_name: str, tags: dict[str, str] | None = None):
    """Start an MLflow run in `experiment`, creating it with the right artifact root.

    Returns the active-run context manager of `mlflow.start_run`.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    ensure_experiment(cfg, experiment)
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name, tags=tags or {})


def ensure_experiment(cfg: Config, name: str) -> str:
    """The experiment's id; created with artifacts under the data root when new.

    With a tracking server the server decides artifact locations (--artifacts-destination),
    so only the SQLite default sets one here.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cfg))
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:") or cfg.mlflow.artifact_root:
        location = join_uri(artifact_root(cfg), name)
    return client.create_experiment(name, artifact_location=location)


def server_command(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """`mlflow server` for this root: SQLite backend and served artifacts under
    `<root>/mlflow-server/`, so clients (executors, DDP ranks) upload artifacts through
    the server instead of writing to their own disks."""
    import sys
    from pathlib import Path

    home = Path(local_root(cfg)) / "mlflow-server"
    home.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow), "server",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "artifacts"),
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]


# Spark's names of the column types (`DataType.typeName()`) and MLflow's for the same values.
MLFLOW_TYPES = {"byte": "integer", "short": "integer", "integer": "integer", "long": "long", "float": "float",
                "double": "double", "boolean": "boolean", "string": "string", "binary": "binary", "date": "datetime",
                "timestamp": "datetime", "timestamp_ntz": "datetime"}


def spark_dataset(df, path: str, name: str, rows: int):
    """`mlflow.data.from_spark(df)` for `log_input`, its schema declared from Spark's and
    its profile from the `rows` the stage already counted.

    Left to itself, MLflow infers the schema with its model-input inference, which warns
    that integer columns cannot hold missing values. That holds for a pandas frame sent to
    a model, not for a Spark table (its integer columns take nulls), and this schema only
    records what the table holds. A column type MLflow has no name for leaves the dataset
    without a schema, as MLflow's own inference does when it fails.

    MLflow's own profile counts the rows by sending every row through Python workers
    (`df.rdd`, `sumApprox` with a 5 s timeout, each time the dataset is logged): seconds
    at a million rows, and a Spark job that keeps running after the timeout.
    """
    import mlflow
    from mlflow.types import ColSpec, Schema

    found = mlflow.data.from_spark(df, path=path, name=name)
    dataset = _counted_dataset_class()(df=found.df, source=found.source, name=found.name, digest=found.digest)
    dataset.rows = int(rows)
    try:
        schema = Schema([ColSpec(mlflow_type(field.dataType), field.name) for field in df.schema.fields])
    except KeyError:
        schema = None
    dataset.schema = schema  # in place of the inference MLflow would run when the dataset is logged
    return dataset


def _counted_dataset_class():
    """A SparkDataset whose profile is the row count it is given (MLflow's imported lazily)."""
    from mlflow.data.spark_dataset import SparkDataset

    class CountedSparkDataset(SparkDataset):
        rows = 0

        @property
        def profile(self):
            return {"approx_count": self.rows}

    return CountedSparkDataset


def mlflow_type(spark_type):
    """MLflow's type for a Spark column type; KeyError for one it has no name for (a map)."""
    from mlflow.types.schema import Array, DataType, Object, Property

    kind = spark_type.typeName()
    if kind == "array":
        return Array(mlflow_type(spark_type.elementType))
    if kind == "struct":
        return Object([Property(f.name, mlflow_type(f.dataType), required=not f.nullable) for f in spark_type.fields])
    return DataType[MLFLOW_TYPES[kind]]
