"""`make setup` runs once per environment definition: a stamp keyed on its files' hash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
SETUP_FILES = ("Makefile", "constraints.txt", "pyproject.toml", "scripts/setup.sh")


def make_question(target: str, cwd: Path, venv: Path) -> int:
    """`make -q`: 0 when the target is up to date, 1 when it would run something."""
    return subprocess.run(["make", "-q", target, f"VENV={venv}"], cwd=cwd, capture_output=True, timeout=60).returncode


def copy_setup_files(tmp_path: Path) -> Path:
    for name in SETUP_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_setup_is_up_to_date_after_it_ran():
    assert make_question("setup", REPO, VENV) == 0


def test_fresh_venv_needs_setup(tmp_path):
    assert make_question("setup", REPO, tmp_path / "no-venv-here") == 1


def test_changed_constraints_need_setup_again(tmp_path):
    work = copy_setup_files(tmp_path)
    assert make_question("setup", work, VENV) == 0  # same files, same stamp
    with open(work / "constraints.txt", "a") as constraints:
        constraints.write("# a changed pin\n")
    assert make_question("setup", work, VENV) == 1
