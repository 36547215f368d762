"""What a stage is: one declaration per stage module, listed in order in `recpipe.stages`.

A declaration says everything the runner, the CLI, spark-submit, the nightly and the
Airflow DAG need to know about a stage: its name and help, the configuration it reads,
the table partitions it reads (`reads`, the same function its `run` uses to choose them)
and writes, the registry aliases it depends on, how to count its rows, and its `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import Any, Callable, Sequence

from recpipe.config import Config
from recpipe.tables import reader_location

# Every stage's digest covers where its tables are.
ALWAYS_READ = ("paths", "tables")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One table, or one day of it (`dt=D`), by its name under `tables:`."""

    table: str
    day: dt.date | None = None
    required: bool = False  # the runner refuses to start the stage when it is missing

    def location(self, cfg: Config) -> str:
        """Its committed version's folder (where it would be, when absent)."""
        return reader_location(cfg, self.table, self.day)

    @property
    def label(self) -> str:
        return f"{self.table}/dt={self.day.isoformat()}" if self.day else self.table


def days(table: str, first: dt.date, last: dt.date, required: bool = False) -> list[Partition]:
    """One partition per day first..last (none when last < first)."""
    return [Partition(table, first + dt.timedelta(days=k), required) for k in range((last - first).days + 1)]


def no_rows(summary: dict) -> tuple[int | None, int | None]:
    return None, None


def no_note(summary: dict) -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class Option:
    """One extra command-line option of a stage's command (argparse's arguments)."""

    flags: tuple[str, ...]
    kwargs: dict

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage's declaration.

    Attributes:
        name: the command and the marker's name (`recpipe clean`, `_markers/dt=D/clean.json`).
        help: one line for `recpipe --help`.
        config: the config sections (`"clean"`) and keys (`"evaluation.days"`) it reads;
            their values are part of its digest, with `paths` and `tables`.
        reads: the partitions it reads for day D.
        writes: the partitions it writes for day D; their listings are checked on a rerun,
            so a deleted output reruns the stage.
        run: `run(spark, cfg, date) -> summary dict`.
        rows: rows in and out, from the summary (None where it has no such count).
        registry: the registry state it reads for D, as names and versions (a new
            champion is a new input of score).
        note: a short note for the summary table, from the summary.
        options: extra options of its command, as the flags' names and argparse's arguments.
    """

    name: str
    help: str
    config: tuple[str, ...]
    reads: Callable[[Config, dt.date], Sequence[Partition]]
    writes: Callable[[Config, dt.date], Sequence[Partition]]
    run: Callable[[Any, Config, dt.date], dict]
    rows: Callable[[dict], tuple[int | None, int | None]] = no_rows
    registry: Callable[[Config, dt.date], dict[str, str]] = lambda cfg, date: {}
    note: Callable[[dict], str] = no_note
    options: tuple[Option, ...] = ()

    def config_values(self, cfg: Config) -> dict[str, Any]:
        """The values of every key it reads, by `section.key`."""
        settings = cfg.to_dict()
        values = {}
        for entry in (*ALWAYS_READ, *self.config):
            section, _, key = entry.partition(".")
            chosen = settings[section] if not key else {key: settings[section][key]}
            values.update({f"{section}.{k}": v for k, v in chosen.items()})
        return values


def total(value: Any) -> int | None:
    """A row count from a summary entry: a number, or a dict of numbers summed."""
    if isinstance(value, dict):
        return int(sum(value.values()))
    return None if value is None else int(value)
