"""What a training run records about itself in MLflow: tags, parameters, the resolved
config, the samples' meta and the training dataset with its digest."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Mapping

from pyspark.sql import SparkSession

from recpipe import io
from recpipe.config import Config, RankerConfig
from recpipe.etl.samples import TEST, TRAIN, VALID
from recpipe.ranker.inputs import InputStats
from recpipe.splits import split_location
from recpipe.tracking import spark_dataset


def run_tags(cfg: Config, date: dt.date) -> dict[str, str]:
    return {"date": date.isoformat(), "stage": "train", "git_commit": git_commit()}


def git_commit() -> str:
    """The commit of the code that trains (the checkout this package lives in), or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_run_inputs(spark: SparkSession, cfg: Config, date: dt.date, rc: RankerConfig, stats: InputStats,
                   meta: Mapping) -> None:
    """Parameters, the resolved config, the training dataset (with its digest as a tag)."""
    import mlflow

    mlflow.log_params({f"ranker.{k}": v for k, v in cfg.to_dict()["ranker"].items()})
    mlflow.log_params({
        "rows_train": stats.rows[TRAIN], "rows_valid": stats.rows[VALID], "rows_test": stats.rows[TEST],
        "item_vocab": stats.item_vocab, "cat_vocab": stats.cat_vocab, "history_length": meta["history_length"],
    })
    mlflow.log_dict(cfg.to_dict(), "config.yaml")
    mlflow.log_dict(dict(meta), "samples_meta.json")
    mlflow.log_dict({"als_run_per_sample_day": stats.als_days}, "als_days.json")
    location = split_location(cfg, date, TRAIN)
    dataset = spark_dataset(io.read_path(spark, location), path=location, name=f"ranker_input-{date}-train",
                            rows=stats.rows[TRAIN])
    mlflow.log_input(dataset, context="training")
    mlflow.set_tag("data_digest", dataset.digest)
