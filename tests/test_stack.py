"""The pinned stack works as one island: Spark writes Parquet, Petastorm reads it into torch.

A version bump that breaks the island (pyarrow >= 15 under Petastorm, numpy 2 under
pyarrow 14, ...) fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parent.parent
# Pinned for an extra that `make setup` does not install (`make notebooks` does).
OPTIONAL_EXTRAS_ONLY = {"notebook"}


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_installed_versions_match_constraints():
    from importlib.metadata import version

    pins = pinned_versions()
    assert {"pyspark", "pyarrow", "numpy", "pandas", "petastorm", "torch", "mlflow"} <= set(pins)
    for name, pinned in pins.items():
        if name in OPTIONAL_EXTRAS_ONLY:
            continue
        installed = version(name)
        assert installed.split("+")[0] == pinned, f"{name}: installed {installed}, constraints.txt pins {pinned}"


def test_spark_parquet_read_by_petastorm_into_torch(spark, tmp_path):
    import mlflow  # noqa: F401  (imported in the same process on purpose)
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import DataLoader
    from pyspark.sql import functions as F

    rows = 257
    frame = (
        spark.range(rows)
        .select(
            F.col("id").cast("int").alias("user_idx"),
            (F.col("id") % 2).cast("float").alias("label"),
            F.array(*[(F.col("id") * 10 + i).cast("int") for i in range(4)]).alias("hist_items"),
        )
        .repartition(3)
    )
    frame.write.parquet(str(tmp_path / "samples"))

    seen = {}
    with make_batch_reader(f"file://{tmp_path / 'samples'}", num_epochs=1, workers_count=2) as reader:
        for batch in DataLoader(reader, batch_size=64):
            assert isinstance(batch["user_idx"], torch.Tensor)
            assert batch["hist_items"].shape[1:] == (4,)
            for user, label, hist in zip(batch["user_idx"], batch["label"], batch["hist_items"]):
                seen[int(user)] = (float(label), hist.tolist())

    assert sorted(seen) == list(range(rows))
    assert all(label == user % 2 for user, (label, _) in seen.items())
    assert all(hist == [user * 10 + i for i in range(4)] for user, (_, hist) in seen.items())
