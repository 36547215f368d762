"""What the benchmarks that measure a pipeline stage share: `--conf/--set/--date` as the
CLI takes them, and a data root where the nightly for D has run.

`ensure_nightly` runs `scripts/run_local.sh` (what `make run` runs: generate, the days
before D, the nightly of D) unless the root already holds D's finished nightly (the last
nightly stage's marker); the stages skip what their markers say is done.

Not a benchmark itself: each `*_bench.py` ends with its own `summary: key=value …` line
(`bench_summary.summary_line`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from recpipe.config import Config, load_config, parse_date

REPO = Path(__file__).resolve().parents[1]


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"), help="config profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override (repeatable), as the CLI's --set")
    parser.add_argument("--date", type=parse_date, help="the day D (default: the last generated day)")


def pipeline_config(args: argparse.Namespace) -> tuple[Config, dt.date]:
    cfg = load_config(args.conf, args.overrides)
    return cfg, args.date or cfg.generate.dates[-1]


def ensure_nightly(args: argparse.Namespace, date: dt.date) -> None:
    """Generate and run the nightly of D unless it has finished on this root."""
    from recpipe.markers import read_marker

    cfg = load_config(args.conf, args.overrides)
    if read_marker(cfg, date, cfg.nightly.stages[-1]) is not None:
        return
    command = ["bash", str(REPO / "scripts" / "run_local.sh"), args.conf]
    for override in args.overrides:
        command += ["--set", override]
    env = {**os.environ, "DATE": date.isoformat(), "BIN": str(Path(sys.executable).parent)}
    print(f"# making sure the nightly for {date} has run: {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)


class PeakRss:
    """Samples the resident memory of this process and its children every 0.2 s; `samples`
    keeps each (wall-clock time, bytes) so that `peak_between` gives a part's peak."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.samples: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def peak_between(self, start: float, end: float) -> int:
        """The largest sample taken from `start` to `end` (seconds since the epoch); 0 if none."""
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)

    def _sample(self):
        while not self._stop.is_set():
            rss = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except Exception:
                    pass
            self.peak = max(self.peak, rss)
            self.samples.append((time.time(), rss))
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
