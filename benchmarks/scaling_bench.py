"""The nightly at several sizes: seconds per stage and peak memory as events per day grow.

    .venv/bin/python benchmarks/scaling_bench.py --events-per-day 1000000 --events-per-day 3000000 \\
        [--days 5] [--base var/scaling] [--conf conf/local.yaml] [--set k=v]

For each size the generator's users (and, with the square root, its items) scale from
the default data set's (20,000 users make about 72,600 lines a day). Each size gets its
own root under `--base` and `scripts/run_local.sh` (what `make run` runs) over `--days`
generated days: the days before D cleaned, the ALS run of the first train day, then the
nightly of D. The ranker's train window is the days between (`features.train_days` =
days - 2). A root whose nightly of D has finished is measured from what it logged.

Seconds per stage come from the nightly's own MLflow run (`recpipe-nightly`), D's lines
from its clean marker; peak memory is the resident set of the whole process tree
(driver JVM, Python workers, DDP ranks) sampled every 0.2 s over the whole script, and
over each of D's stages (`<stage>_peak_gb`, `nightly_peak_gb`: the samples inside the
stage's window, which its log line gives; only for a root this run built; the samples,
seconds since the epoch and MiB, go to `<base>/events-<N>.rss.tsv` beside the log). Each
stage's seconds against the smallest size's show whether the cost grows faster than the
data. `--date D` makes D the last generated day (`generate.start_date` = D - days + 1);
by default D is the last day of the profile's `generate.start_date` and `--days`.

Ends with `summary: <events>.lines=… <events>.<stage>_s=… <events>.nightly_s=… <events>.peak_rss_gb=…
<events>.<stage>_peak_gb=… …`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

from bench_pipeline import PeakRss, add_pipeline_args  # noqa: E402  (beside this script)
from bench_summary import summary_line  # noqa: E402
from recpipe.config import load_config  # noqa: E402

DEFAULT_USERS, DEFAULT_ITEMS, DEFAULT_LINES_PER_DAY = 20_000, 5_000, 72_600
STAGES = ("clean", "quality", "features", "als", "train", "promote", "score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_args(parser)  # --set applies after the size's own overrides; --date is the last generated day
    parser.add_argument("--events-per-day", dest="sizes", type=int, action="append",
                        help="lines a day to generate (repeatable); default 72600 and 1000000")
    parser.add_argument("--days", type=int, default=5, help="generated days; D is the last")
    parser.add_argument("--base", default=str(REPO / "var" / "scaling"), help="folder of the sizes' roots")
    return parser.parse_args(argv)


def size_overrides(lines_per_day: int, root: Path, days: int) -> list[str]:
    scale = lines_per_day / DEFAULT_LINES_PER_DAY
    return [f"paths.root={root}", f"generate.users={int(DEFAULT_USERS * scale)}",
            f"generate.items={max(int(DEFAULT_ITEMS * math.sqrt(scale)), 500)}", f"generate.days={days}",
            f"features.train_days={days - 2}", f"generate.events_per_file={max(250_000, lines_per_day // 8)}"]


def measure(args: argparse.Namespace, lines_per_day: int) -> dict[str, float]:
    from recpipe.markers import read_marker
    from recpipe.names import NIGHTLY_EXPERIMENT
    from recpipe.report import run_metrics

    overrides = size_overrides(lines_per_day, Path(args.base) / f"events-{lines_per_day}", args.days)
    if args.date:
        overrides.append(f"generate.start_date={args.date - dt.timedelta(days=args.days - 1)}")
    overrides += args.overrides
    cfg = load_config(args.conf, overrides)
    date = cfg.generate.dates[-1]
    figures: dict[str, float] = {}
    if read_marker(cfg, date, cfg.nightly.stages[-1]) is None:
        command = ["bash", str(REPO / "scripts" / "run_local.sh"), args.conf]
        for override in overrides:
            command += ["--set", override]
        env = {**os.environ, "DATE": date.isoformat(), "BIN": str(Path(sys.executable).parent)}
        log = Path(args.base) / f"events-{lines_per_day}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"# {lines_per_day:,} lines a day: {' '.join(command)} > {log}", flush=True)
        with PeakRss() as rss, open(log, "w") as out:
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
            figures["make_run_s"] = round(time.perf_counter() - started, 1)
        figures["peak_rss_gb"] = round(rss.peak / 2**30, 2)
        figures.update(stage_peaks(rss, log.read_text(), date))
        log.with_suffix(".rss.tsv").write_text("".join(f"{at:.1f}\t{size >> 20}\n" for at, size in rss.samples))
    seconds = {key.removesuffix("_seconds"): value for key, value in run_metrics(cfg, NIGHTLY_EXPERIMENT, date).items()}
    figures["lines"] = int(read_marker(cfg, date, "clean")["rows_in"])
    for stage in STAGES:
        if stage in seconds:
            figures[f"{stage}_s"] = round(seconds[stage], 1)
    figures["nightly_s"] = round(seconds["total"], 1)
    return figures


def stage_peaks(rss: PeakRss, log_text: str, date: dt.date) -> dict[str, float]:
    """`<stage>_peak_gb` of each of D's stages and `nightly_peak_gb`, from the samples taken
    between a stage's start and its end (the runner's `<stage> D: done in S s` line, its
    time to the second, less S)."""
    done = re.compile(rf"^(\S+ \S+) INFO recpipe\.runner: (\w+) {date}: done in ([\d.]+) s$", re.M)
    windows = {}
    for stamp, stage, seconds in done.findall(log_text):
        end = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + 1  # the log's second, rounded up
        windows[stage] = (end - float(seconds) - 1, end)
    peaks = {f"{stage}_peak_gb": round(rss.peak_between(*window) / 2**30, 2) for stage, window in windows.items()}
    if windows:
        whole = (min(w[0] for w in windows.values()), max(w[1] for w in windows.values()))
        peaks["nightly_peak_gb"] = round(rss.peak_between(*whole) / 2**30, 2)
    return peaks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = args.sizes or [DEFAULT_LINES_PER_DAY, 1_000_000]
    results = {size: measure(args, size) for size in sizes}

    print(f"{'lines of D':>12} " + " ".join(f"{s:>9}" for s in (*STAGES, "nightly")) + f" {'peak GB':>8}")
    for size, figures in results.items():
        cells = " ".join(f"{figures.get(f'{s}_s', float('nan')):>9.1f}" for s in (*STAGES, "nightly"))
        print(f"{figures['lines']:>12,} {cells} {figures.get('peak_rss_gb', float('nan')):>8}")
        if "nightly_peak_gb" in figures:
            print(f"{'peak GB':>12} " + " ".join(f"{figures.get(f'{s}_peak_gb', float('nan')):>9}"
                                                for s in (*STAGES, "nightly")))
    smallest = results[sizes[0]]
    for size, figures in list(results.items())[1:]:
        growth = figures["lines"] / smallest["lines"]
        ratios = {s: figures[f"{s}_s"] / smallest[f"{s}_s"] for s in (*STAGES, "nightly")
                  if smallest.get(f"{s}_s") and f"{s}_s" in figures}  # quality takes 0.0 s
        print(f"{size:,} vs {sizes[0]:,}: data x{growth:.1f}; seconds x " +
              ", ".join(f"{s} {r:.1f}" for s, r in ratios.items()))
        figures["data_growth"] = round(growth, 2)
        figures["nightly_growth"] = round(ratios["nightly"], 2)
    print(summary_line({str(size): figures for size, figures in results.items()}))


if __name__ == "__main__":
    main()
