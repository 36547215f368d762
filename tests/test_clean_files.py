"""The cleaner over real files: corrupt, truncated and mislabelled `.gz` files are
quarantined while the day's other files are cleaned, and a range clean replaces every day
it covers, an emptied one too."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from recpipe import cli, io
from recpipe.etl import clean
from recpipe.etl.quality import report_location
from recpipe.etl.raw_files import CORRUPT_FILE

from tests.test_clean import (
    CATALOGUE,
    D2,
    DAY1,
    DAY1_REJECTS,
    DAY2,
    DAY2_REJECTS,
    LOCAL_CONF,
    TINY_SETTINGS,
    D,
    event_line,
    tiny_config,
    write_raw_catalogue,
    write_raw_day,
)

pytestmark = pytest.mark.spark


def gzip_bytes(lines) -> bytes:
    return gzip.compress("".join(f"{line}\n" for line in lines).encode())


def test_bad_files_are_quarantined_by_name_and_every_line_of_the_good_files_is_accounted_for(spark, tmp_path):
    root = tmp_path / "root"
    cfg = tiny_config(root)
    write_raw_catalogue(cfg, CATALOGUE)
    day = Path(cfg.table_path("raw_events", D))
    good_gz = [*DAY1.values(), *DAY1_REJECTS]
    good_plain = [event_line(event_id=f"p{i}", user_id="u7") for i in range(3)] + ["not json"]
    lost = [event_line(event_id=f"t{i}") for i in range(2000)]
    day.mkdir(parents=True)
    (day / "part-00000.json.gz").write_bytes(gzip_bytes(good_gz))
    whole = gzip_bytes(lost)
    (day / "part-00001.json.gz").write_bytes(whole[: len(whole) // 2])  # a collector that died mid-write
    (day / "part-00002.json.gz").write_bytes(b"")
    (day / "part-00003.json.gz").write_text("\n".join(lost[:5]) + "\n")  # plain text under a .gz name
    (day / "part-00004.json").write_text("".join(f"{line}\n" for line in good_plain))
    (day / "_SUCCESS").write_text("")  # hidden from readers, as in Spark

    args = ["clean", "--conf", str(LOCAL_CONF), "--set", f"paths.root={root}",
            "--set", f"mlflow.tracking_uri=sqlite:///{root}/mlflow/mlflow.db", "--date", D.isoformat()]
    for setting in TINY_SETTINGS:
        args += ["--set", setting]
    assert cli.main(args) == 0

    report = json.loads(Path(report_location(cfg, D)).read_text())
    quarantined = {Path(q["file"]).name: q for q in report["quarantined_files"]}
    assert sorted(quarantined) == ["part-00001.json.gz", "part-00002.json.gz", "part-00003.json.gz"]
    for name, record in quarantined.items():
        assert record["reason"] == CORRUPT_FILE and record["error"]
        assert record["bytes"] == (day / name).stat().st_size
    assert report["lines_read"] == len(good_gz) + len(good_plain)
    assert report["accepted"] + report["rejected"] == report["lines_read"]
    events = {r["event_id"] for r in io.read_day(spark, cfg, "events", D).collect()}
    rejects = [r["line"] for r in io.read_day(spark, cfg, "rejects", D).collect()]
    assert events == {*DAY1, "p0", "p1", "p2"}
    assert sorted(rejects) == sorted([*DAY1_REJECTS, "not json"])
    assert not events & {f"t{i}" for i in range(2000)}  # nothing of a damaged file gets in

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow/mlflow.db")
    [run] = mlflow.search_runs(experiment_names=["recpipe-etl"], output_format="list")
    assert run.data.metrics["files_quarantined"] == 3


def test_a_day_of_only_bad_files_cleans_to_nothing_and_says_so(spark, tmp_path):
    cfg = tiny_config(tmp_path / "root")
    write_raw_catalogue(cfg, CATALOGUE)
    day = Path(cfg.table_path("raw_events", D))
    day.mkdir(parents=True)
    (day / "part-00000.json.gz").write_bytes(b"")
    report = clean.run(spark, cfg, D)
    assert (report["lines_read"], report["accepted"], len(report["quarantined_files"])) == (0, 0, 1)
    assert not io.table_exists(cfg, "events", D)


def test_range_clean_replaces_every_day_it_covers_also_one_now_empty(spark, tmp_path):
    cfg = tiny_config(tmp_path / "root")
    write_raw_catalogue(cfg, CATALOGUE)
    write_raw_day(cfg, D, [*DAY1.values(), *DAY1_REJECTS])
    write_raw_day(cfg, D2, [*DAY2.values(), *DAY2_REJECTS])
    clean.run_range(spark, cfg, D, D2)
    assert io.table_exists(cfg, "events", D2) and io.table_exists(cfg, "rejects", D2)

    shutil.rmtree(cfg.table_path("raw_events", D2))
    write_raw_day(cfg, D2, [])  # the collector re-delivered D2 as an empty file
    report = clean.run_range(spark, cfg, D, D2)
    assert report["lines_read"] == len(DAY1) + len(DAY1_REJECTS)
    assert not io.table_exists(cfg, "events", D2) and not io.table_exists(cfg, "rejects", D2)
    assert {r["event_id"] for r in io.read_day(spark, cfg, "events", D).collect()} == set(DAY1)
