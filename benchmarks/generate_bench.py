"""Throughput and memory of `recpipe generate`.

Runs the generator once into a temporary data root and prints one line: lines written
per second of wall time (every raw line, faults and bots included) and the process's
peak resident memory, and the CPU seconds it used (wall time suffers when other
work shares the machine; CPU time much less). With the default configuration (about 1 M lines over 14 days):

    PYTHONPATH=lib python benchmarks/generate_bench.py
    PYTHONPATH=lib python benchmarks/generate_bench.py --set generate.users=200000 --set generate.days=3

Peak RSS is the whole process (interpreter and imports included); the baseline before
generating is printed beside it so the generator's own share is visible.
Ends with `summary: lines=… lines_per_s=… peak_rss_mib=… …`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from recpipe.config import load_config
from recpipe.generate import run
from bench_summary import summary_line  # noqa: E402  (beside this script)

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"), help="config profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override (repeatable); paths.root is always a temporary folder")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    parser.add_argument("--date", help="accepted like the other benchmarks' and unused: every day is generated")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User plus system CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_size_mib(root: Path) -> float:
    """Size of the gzipped raw event files."""
    return sum(p.stat().st_size for p in (root / "raw" / "events").rglob("*.json.gz")) / 2**20


def measure(conf: str, overrides: list[str]) -> dict:
    """Generate once into a temporary root; return the figures."""
    baseline = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="recpipe-generate-bench-") as root:
        cfg = load_config(conf, [*overrides, f"paths.root={root}"])
        start, cpu_start = time.perf_counter(), cpu_seconds()
        manifest = run(cfg)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        size = raw_size_mib(Path(root))
    lines = manifest["totals"]["lines"]
    return {
        "lines": lines,
        "days": len(manifest["days"]),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "lines_per_s": round(lines / seconds),
        "peak_rss_mib": round(peak_rss_mib()),
        "baseline_rss_mib": round(baseline),
        "raw_gz_mib": round(size, 1),
        "ctr": round(manifest["truth"]["ctr"], 4),
        "overrides": overrides,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = measure(args.conf, args.overrides)
    print(f"generate: {figures['lines']:,} lines over {figures['days']} days in {figures['seconds']:.1f} s"
          f" ({figures['cpu_seconds']:.1f} s CPU)"
          f" = {figures['lines_per_s']:,} lines/s; peak RSS {figures['peak_rss_mib']} MiB"
          f" (baseline {figures['baseline_rss_mib']} MiB); {figures['raw_gz_mib']} MiB gzipped;"
          f" CTR {figures['ctr']:.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    print(summary_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
