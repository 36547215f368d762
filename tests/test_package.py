"""The wheel is a working install: built from the checkout by `make pack`, installed with its
declared dependencies into a fresh venv under constraints.txt, run from another directory,
and packed by venv-pack into an archive that holds the package itself, not a link to the
checkout. (tests/test_cluster.py runs executors from that archive.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def run(*command, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env())
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(packed_env) -> Path:
    """bin/ of the venv `make pack` made: the wheel and the dependencies it declares, nothing else."""
    return packed_env["venv"] / "bin"


def test_the_installed_cli_reports_its_version_and_its_config_from_another_directory(installed, tmp_path):
    import recpipe

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "etc").mkdir(parents=True)
    assert run(installed / "recpipe", "--version", cwd=elsewhere).stdout.strip() == f"recpipe {recpipe.__version__}"

    default = yaml.safe_load(run(installed / "recpipe", "show-config", cwd=elsewhere).stdout)
    assert default["paths"]["root"] == str(Path.home() / ".local" / "share" / "recpipe")
    # a profile of the user's own, with no base.yaml beside it: layered over the installed one
    profile = elsewhere / "etc" / "prod.yaml"
    profile.write_text("paths:\n  root: ../data\nspark:\n  master: local[1]\n")
    mine = yaml.safe_load(run(installed / "recpipe", "show-config", "--conf", profile, cwd=tmp_path).stdout)
    assert mine["paths"]["root"] == str(elsewhere / "data") and mine["spark"]["master"] == "local[1]"
    assert mine["submit"]["jobs_dir"].startswith(str(installed.parent / "lib"))  # the jobs ship in the package
    assert sorted(p.name for p in Path(mine["submit"]["jobs_dir"]).glob("*.py")) == sorted(
        p.name for p in (REPO / "jobs").glob("*.py"))


def test_the_base_install_holds_the_driver_stack_and_leaves_training_to_its_extra(installed, tmp_path):
    check = ("import importlib.util, mlflow, pyspark, yaml, filelock, recpipe.stages\n"
             "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('petastorm') is None\n"
             "print(pyspark.__version__, mlflow.__version__)")
    versions = run(installed / "python", "-c", check, cwd=tmp_path).stdout.split()
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert versions == [pins["pyspark"], pins["mlflow"]]  # installed under the pinned constraints
    run(installed / "pip", "check", cwd=tmp_path)


def test_the_packed_archive_holds_the_installed_package_not_a_link_to_the_checkout(packed_env):
    import tarfile

    import recpipe

    with tarfile.open(packed_env["archive"]) as archive:
        names = set(archive.getnames())
    site = "lib/python{}.{}/site-packages".format(*sys.version_info[:2])
    assert {"bin/python", f"{site}/recpipe/__init__.py", f"{site}/recpipe/jobs/clean_events.py",
            f"{site}/recpipe/conf/base.yaml", f"{site}/pyspark/__init__.py"} <= names
    assert f"{site}/recpipe-{recpipe.__version__}.dist-info/METADATA" in names
    assert not any(n.endswith(".pth") and "recpipe" in n for n in names)  # an editable install leaves one
