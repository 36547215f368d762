"""Table versions and their commit (`recpipe.tables`): what readers see, what a failed or
killed writer leaves, and what the next run makes of it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recpipe import io, tables
from recpipe.errors import DataError
from tests.conftest import LOCAL_CONF, REPO, subprocess_env

D = dt.date(2026, 11, 14)
D2 = D + dt.timedelta(days=1)


def frame(spark, *values: int):
    return spark.createDataFrame([(v,) for v in values], "x int")


def xs(spark, cfg, name, date) -> list[int]:
    return sorted(r.x for r in io.read_day(spark, cfg, name, date).collect())


def files_digest(folder: Path) -> dict[str, str]:
    """Every file under a folder by relative name, with a checksum of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readers_see_the_committed_version_and_a_plain_read_of_the_root_fails(spark, make_config):
    cfg = make_config()
    io.write_day(frame(spark, 1, 2), cfg, "events", D, files=1)
    io.write_day(frame(spark, 3), cfg, "events", D2, files=1)
    root = Path(cfg.table_path("events"))

    assert xs(spark, cfg, "events", D) == [1, 2]
    assert sorted((r.x, r.dt) for r in io.read_days(spark, cfg, "events", D, D2).collect()) == [(1, D), (2, D), (3, D2)]
    assert io.partition_days(cfg, "events") == [D, D2]
    # Nothing a reader of the plain folder could take for data: versions are hidden.
    assert all(p.name.startswith("_") for p in root.iterdir())
    with pytest.raises(Exception, match="(?i)unable to infer schema|path does not exist|no such"):
        spark.read.parquet(str(root)).collect()


def test_each_day_keeps_its_previous_version_and_loses_the_one_before(spark, make_config):
    cfg = make_config()
    for values in ((1,), (2,), (3,)):
        io.write_day(frame(spark, *values), cfg, "events", D, files=1)
    pointer = json.loads(Path(cfg.table_path("events"), "_committed.json").read_text())["days"][D.isoformat()]
    versions = sorted(p.name for p in Path(cfg.table_path("events")).glob("_v-*"))

    assert xs(spark, cfg, "events", D) == [3]
    assert versions == sorted(f"_v-{pointer[k]}" for k in ("version", "previous"))


@pytest.mark.parametrize("rows", [0, None], ids=["rows-given", "rows-unknown"])
def test_an_empty_write_removes_the_day_for_readers(spark, make_config, rows):
    cfg = make_config()
    io.write_day(frame(spark, 1), cfg, "events", D, files=1)
    io.write_day(frame(spark, 2).where("x > 5"), cfg, "events", D, files=1, rows=rows)

    assert io.location(cfg, "events", D) is None
    assert io.partition_days(cfg, "events") == []
    # D's earlier version is kept as `previous`; the empty write leaves no version of its own
    assert len(list(Path(cfg.table_path("events")).glob("_v-*"))) == 1


def test_a_stage_that_raises_commits_nothing_and_leaves_no_version_behind(spark, make_config):
    cfg = make_config()
    io.write_day(frame(spark, 1), cfg, "events", D, files=1)
    before = files_digest(Path(cfg.table_path("events")))

    with pytest.raises(RuntimeError, match="half-way"):
        with tables.committing(cfg, "a failing stage"):
            io.write_day(frame(spark, 7), cfg, "events", D, files=1)
            io.write_day(frame(spark, 8), cfg, "rejects", D, files=1)
            assert xs(spark, cfg, "events", D) == [7]  # the stage reads what it wrote
            raise RuntimeError("half-way")

    assert xs(spark, cfg, "events", D) == [1]
    assert not io.table_exists(cfg, "rejects", D)
    assert files_digest(Path(cfg.table_path("events"))) == before
    assert not list(Path(cfg.paths.root, "_commits").glob("*"))


def test_the_sub_tables_of_a_day_are_one_version(spark, make_config):
    cfg = make_config()
    with tables.committing(cfg, "als"):
        io.write_version(frame(spark, 1), cfg, "als_user_factors", D, files=1)
        io.write_version(frame(spark, 2), cfg, "als_item_factors", D, files=1)
    with pytest.raises(RuntimeError):
        with tables.committing(cfg, "als again"):
            io.write_version(frame(spark, 10), cfg, "als_user_factors", D, files=1)
            raise RuntimeError("died before the item factors")

    assert io.partition_days(cfg, "als") == [D]
    assert (xs(spark, cfg, "als_user_factors", D), xs(spark, cfg, "als_item_factors", D)) == ([1], [2])
    assert Path(io.location(cfg, "als_user_factors", D)).parent == Path(io.location(cfg, "als_item_factors", D)).parent


def test_days_written_before_versions_are_taken_over_by_the_first_commit(spark, make_config):
    cfg = make_config()
    frame(spark, 5).write.parquet(cfg.table_path("events", D))  # the old layout: data straight in dt=D
    assert xs(spark, cfg, "events", D) == [5]

    io.write_day(frame(spark, 6), cfg, "events", D2, files=1)
    assert (xs(spark, cfg, "events", D), xs(spark, cfg, "events", D2)) == ([5], [6])
    io.write_day(frame(spark, 7), cfg, "events", D, files=1)
    io.write_day(frame(spark, 8), cfg, "events", D, files=1)  # the old folder is now the one before previous

    assert xs(spark, cfg, "events", D) == [8]
    assert not Path(cfg.table_path("events", D)).exists()


def test_a_table_with_versions_but_no_pointer_is_an_error_not_an_empty_table(spark, make_config):
    cfg = make_config()
    io.write_day(frame(spark, 1), cfg, "dim_users", D, files=1)
    Path(cfg.table_path("dim_users"), "_committed.json").unlink()

    with pytest.raises(DataError, match=r"dim/users holds table versions but no readable _committed.json"):
        io.latest_day(cfg, "dim_users", D)


# --- a driver killed at each step of a commit ------------------------------------------

WRITER = """
import sys
from recpipe import io, tables
from recpipe.config import load_config
from recpipe.tables import committing
import datetime as dt

cfg = load_config(sys.argv[1], [f"paths.root={sys.argv[2]}"])
day, content = dt.date(2026, 11, 14), sys.argv[3]
tables.recover(cfg)  # what the runner does first, under the lock
with committing(cfg, "writer"):
    io.write_file(cfg, "quality", day, "quality.json", f"quality {content}".encode())
    io.write_file(cfg, "samples", day, "_meta.json", f"meta {content}".encode())
"""


def write_both(root: Path, content: str, fault: str | None = None) -> int:
    env = {**subprocess_env(), **({tables.FAULT_ENV: fault} if fault else {})}
    return subprocess.run([sys.executable, "-c", WRITER, str(LOCAL_CONF), str(root), content], env=env,
                          cwd=REPO, timeout=120).returncode


def committed(cfg) -> dict[str, bytes]:
    return {name: Path(tables.committed_location(cfg, name, D), file).read_bytes()
            for name, file in (("quality", "quality.json"), ("samples", "_meta.json"))}


@pytest.mark.parametrize("step", ["after-write:samples", "before-journal", "after-journal", "after-pointers",
                                  "during-gc"])
def test_a_writer_killed_at_a_step_of_its_commit_leaves_the_last_version_whole(step, tmp_path, make_config):
    root = tmp_path / "root"
    cfg = make_config(root=root)
    assert write_both(root, "one") == 0
    assert write_both(root, "two") == 0  # now each day has a previous version, so a commit collects garbage
    version_files = {name: files_digest(Path(tables.committed_location(cfg, name, D)))
                     for name in ("quality", "samples")}

    assert write_both(root, "three", fault=step) == -signal.SIGKILL
    made = step in ("after-journal", "after-pointers", "during-gc")  # the journal is the commit point
    expected = "three" if made else "two"
    assert committed(cfg) == {"quality": f"quality {expected}".encode(), "samples": f"meta {expected}".encode()}
    if not made:  # the previous version, file for file
        assert {n: files_digest(Path(tables.committed_location(cfg, n, D))) for n in version_files} == version_files

    assert write_both(root, "four") == 0
    undisturbed = tmp_path / "undisturbed"
    for content in ("one", "two", "four"):
        assert write_both(undisturbed, content) == 0
    reference = make_config(root=undisturbed)
    assert committed(cfg) == committed(reference)
    assert not list((root / "_commits").iterdir())
    assert versions_kept(cfg) == versions_kept(reference) == {"quality": 2, "samples": 2}


def versions_kept(cfg) -> dict[str, int]:
    return {name: len(list(Path(tables.family(cfg, name)[0]).glob("_v-*"))) for name in ("quality", "samples")}


def test_readers_follow_a_commit_that_was_made_before_its_pointers_were_written(tmp_path, make_config):
    root = tmp_path / "root"
    cfg = make_config(root=root)
    assert write_both(root, "one") == 0
    assert write_both(root, "two", fault="after-journal") == -signal.SIGKILL

    assert list((root / "_commits").glob("*[0-9a-f].json"))  # not applied yet
    assert committed(cfg)["quality"] == b"quality two"
    tables.recover(cfg)
    assert not list((root / "_commits").iterdir())
    assert json.loads(Path(cfg.table_path("quality"), "_committed.json").read_text())["days"][D.isoformat()]


def test_recover_reports_and_removes_the_versions_of_a_commit_never_made(tmp_path, make_config, caplog):
    root = tmp_path / "root"
    cfg = make_config(root=root)
    assert write_both(root, "one") == 0
    assert write_both(root, "two", fault="before-journal") == -signal.SIGKILL
    orphans = sorted(Path(cfg.table_path("quality")).glob("_v-*"))
    assert len(orphans) == 2

    with caplog.at_level("WARNING", logger="recpipe.tables"):
        tables.recover(cfg)

    assert len(list(Path(cfg.table_path("quality")).glob("_v-*"))) == 1
    assert "stopped before its commit; readers never saw it" in caplog.text
    assert not os.listdir(root / "_commits")


# --- a clean killed between its tables -------------------------------------------------

CLEAN_TABLES = ("events", "rejects", "dim_users", "dim_items", "dim_categories", "dim_brands", "catalogue")


def clean_state(cfg, day: dt.date) -> dict[str, str]:
    """What readers see of day D after a clean: each table's rows, and the quality report."""
    from tests.conftest import content_digest

    state = {table: content_digest(tables.committed_location(cfg, table, day)) for table in CLEAN_TABLES}
    state["quality"] = Path(tables.committed_location(cfg, "quality", day), "quality.json").read_text()
    return state


@pytest.mark.slow
def test_a_clean_killed_after_its_events_leaves_every_table_of_its_day_old_and_the_next_run_completes(spark,
                                                                                                      tmp_path):
    import shutil

    from recpipe.etl import clean
    from recpipe.runner import running
    from tests.test_clean import CATALOGUE, DAY1, DAY1_REJECTS, D, TINY_SETTINGS, event_line, tiny_config
    from tests.test_clean import write_raw_catalogue, write_raw_day

    old = [*DAY1.values(), *DAY1_REJECTS]
    new = [*old, event_line(event_id="n", user_id="u7", item_id="i2", ts="2026-11-01T13:00:00Z")]  # a new user too
    roots = {name: tmp_path / name for name in ("killed", "undisturbed")}
    cfgs = {name: tiny_config(root) for name, root in roots.items()}
    write_raw_catalogue(cfgs["killed"], CATALOGUE)
    write_raw_day(cfgs["killed"], D, old)
    clean.run(spark, cfgs["killed"], D)
    old_state = clean_state(cfgs["killed"], D)
    shutil.copytree(roots["killed"], roots["undisturbed"])
    for cfg in cfgs.values():
        write_raw_day(cfg, D, new)
    clean.run(spark, cfgs["undisturbed"], D)
    new_state = clean_state(cfgs["undisturbed"], D)
    assert new_state["dim_users"] != old_state["dim_users"] and new_state["events"] != old_state["events"]

    # Its dictionaries, rejects and catalogue are written before its events, the report after.
    command = [sys.executable, "-m", "recpipe.cli", "clean", "--conf", str(LOCAL_CONF), "--date", D.isoformat()]
    for setting in (f"paths.root={roots['killed']}", f"mlflow.tracking_uri=sqlite:///{roots['killed']}/mlflow/mlflow.db",
                    f"spark.local_dir={tmp_path / 'spark'}", *TINY_SETTINGS):
        command += ["--set", setting]
    killed = subprocess.run(command, cwd=REPO, env={**subprocess_env(), tables.FAULT_ENV: "after-write:events"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert clean_state(cfgs["killed"], D) == old_state  # every table of D, none mixed

    with running(cfgs["killed"], "the next nightly") as runner:  # recovers first, then reruns the stage
        runner.run(clean.STAGE, D)
    assert clean_state(cfgs["killed"], D) == new_state
    assert not list((roots["killed"] / "_commits").iterdir())
