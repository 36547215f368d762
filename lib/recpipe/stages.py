"""The stages, in pipeline order. Each is declared once, in its own module (`STAGE`);
the CLI, spark-submit, the runner, `pipeline`, the nightly and the Airflow DAG all
iterate over this list. A new stage is a module with a `STAGE` and one line here."""

from __future__ import annotations

from recpipe.als import stage as als
from recpipe.errors import ConfigError
from recpipe.etl import clean, features, gate
from recpipe.ranker import stage as train
from recpipe.registry import promote, score
from recpipe.stage import Stage

STAGES: tuple[Stage, ...] = (
    clean.STAGE,
    gate.STAGE,
    features.STAGE,
    als.STAGE,
    train.STAGE,
    promote.STAGE,
    score.STAGE,
)


def names() -> list[str]:
    return [stage.name for stage in STAGES]


def get(name: str) -> Stage:
    """The stage called `name`; ConfigError naming the known ones otherwise."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r} (known: {', '.join(names())})")


def parse(text: str) -> list[Stage]:
    """'clean,features' -> those stages, checked and put in pipeline order."""
    wanted = {get(name.strip()).name for name in text.split(",") if name.strip()}
    return [stage for stage in STAGES if stage.name in wanted]
