"""How a stage becomes a spark-submit application (submit.enabled): the command line, the
resolved config handed to the job, and the guard against submitting from inside a job.
The submissions themselves run in tests/test_cluster.py."""

from __future__ import annotations

import datetime as dt

import pytest
from recpipe.config import load_config
from recpipe.errors import ConfigError
from recpipe.submit import submit_command, submitting, write_resolved_config

from tests.conftest import REPO

CLUSTER_CONF = REPO / "conf" / "cluster.yaml"


def test_the_job_gets_exactly_the_callers_resolved_config(tmp_path):
    cfg = load_config(CLUSTER_CONF, ["generate.users=123", "als.eval_ks=[5, 7]", f"paths.root={tmp_path}"])
    handed = load_config(write_resolved_config(cfg, str(tmp_path)))
    assert handed.to_dict() == cfg.to_dict()
    assert handed.generate.users == 123 and handed.generate.start_date == cfg.generate.start_date


def test_the_command_names_master_wheel_pythons_settings_and_the_stage_job(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    wheel = tmp_path / "recpipe-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    cfg = load_config(CLUSTER_CONF, [f"submit.py_files={tmp_path}/recpipe-*.whl", "submit.python=./env/bin/python",
                                     "submit.conf={spark.executor.memory: 3g}"])
    command = submit_command(cfg, "run-stage", "/tmp/conf/base.yaml", ["--stage", "als", "--date", "2026-11-14"])
    assert command[0].endswith("bin/spark-submit")
    text = " ".join(command)
    assert f"--master {cfg.spark.master} " in text and f"--py-files {wheel} " in text
    assert "--conf spark.pyspark.python=./env/bin/python " in text and "--conf spark.executor.memory=3g " in text
    assert text.endswith("jobs/run_stage.py --conf /tmp/conf/base.yaml --stage als --date 2026-11-14")


def test_a_missing_wheel_is_a_config_error_that_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(CLUSTER_CONF, [f"submit.py_files={tmp_path}/recpipe-*.whl"])
    with pytest.raises(ConfigError, match="make dist"):
        submit_command(cfg, "run-stage", "c.yaml", ["--stage", "clean", "--date", str(dt.date(2026, 11, 14))])


def test_inside_a_submitted_job_nothing_is_submitted_again(monkeypatch):
    cfg = load_config(CLUSTER_CONF)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert submitting(cfg)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40404")  # what spark-submit gives the driver's Python
    assert not submitting(cfg)
    assert not submitting(load_config(REPO / "conf" / "local.yaml"))
