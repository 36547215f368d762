"""The registry stages, the report and the serving code import no training module, so a
scoring or promotion job needs neither Petastorm nor the DDP launcher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, subprocess_env

TRAINING = ("recpipe.ranker", "petastorm", "pyspark.ml.torch")


def imported_after(modules: str) -> list[str]:
    """The modules a fresh interpreter holds after importing `modules` (a package's every
    module when it names a package), as json."""
    script = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        for name in {modules!r}.split(","):
            module = importlib.import_module(name)
            for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
                importlib.import_module(info.name)
        print(json.dumps(sorted(sys.modules)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_modules(loaded: list[str], training: tuple[str, ...] = TRAINING) -> list[str]:
    return [m for m in loaded if any(m == t or m.startswith(t + ".") for t in training)]


def test_every_registry_module_imports_no_training_module():
    loaded = imported_after("recpipe.registry")
    assert "recpipe.registry.promote" in loaded and "recpipe.registry.score" in loaded
    assert training_modules(loaded) == []


def test_the_serving_package_imports_nothing_but_itself_from_recpipe():
    loaded = imported_after("recpipe.serving.model,recpipe.serving.scoring,recpipe.serving.pyfunc")
    assert training_modules(loaded) == []
    assert [m for m in loaded if m.startswith("recpipe.") and not m.startswith("recpipe.serving")] == []


@pytest.mark.parametrize("module", ["recpipe.report"])
def test_the_report_imports_no_recpipe_training_module(module):
    # Spark ML's own package loads pyspark.ml.torch with ALS; recpipe's training side must not load.
    assert training_modules(imported_after(module), ("recpipe.ranker", "petastorm")) == []
