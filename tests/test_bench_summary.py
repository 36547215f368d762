"""Every benchmark ends with one `summary: key=value …` line of its scalar figures."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def load_summary():
    spec = importlib.util.spec_from_file_location("bench_summary", REPO / "benchmarks" / "bench_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_summary_flattens_nested_figures_and_leaves_out_what_is_not_a_scalar():
    line = load_summary().summary_line([{"clean_s": 1.5, "ratio": {"spark": 2}, "note": "two words", "ok": True}])
    assert line == "summary: 0.clean_s=1.5 0.ratio.spark=2 0.ok=True"


def test_every_benchmark_prints_the_summary_line():
    for script in sorted((REPO / "benchmarks").glob("*_bench.py")):
        assert "print(summary_line(" in script.read_text(), script.name


def test_every_benchmark_takes_the_clis_conf_set_and_date():
    import subprocess
    import sys

    for script in sorted((REPO / "benchmarks").glob("*_bench.py")):
        shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                               cwd=REPO)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert all(f"--{flag}" in shown.stdout for flag in ("conf", "set", "date")), script.name
