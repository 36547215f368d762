"""`benchmarks/spark_profile.py` reads a Spark event log back into jobs per call site."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO


def load_profile():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports its neighbours
    try:
        spec = importlib.util.spec_from_file_location("spark_profile", REPO / "benchmarks" / "spark_profile.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["spark_profile"] = module  # its dataclass looks itself up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def job_start(job_id, at, site=None, stage_name="parquet at NativeMethodAccessorImpl.java:0"):
    props = {"callSite.short": site} if site else {}
    return {"Event": "SparkListenerJobStart", "Job ID": job_id, "Submission Time": at, "Stage IDs": [job_id],
            "Stage Infos": [{"Stage Name": stage_name}], "Properties": props}


def task_end(run_ms, cpu_ns, launched=1_000):
    return {"Event": "SparkListenerTaskEnd", "Task Info": {"Launch Time": launched},
            "Task Metrics": {"Executor Run Time": run_ms, "Executor CPU Time": cpu_ns}}


def test_jobs_are_summed_per_call_site_and_their_overlap_counted_once(tmp_path):
    profile = load_profile()
    site = "collect at /opt/app/lib/recpipe/etl/quality.py:68"
    events = [
        {"Event": "SparkListenerExecutorAdded", "Executor Info": {"Total Cores": 2}},
        job_start(0, 1_000, site), task_end(400, 300_000_000),
        job_start(1, 1_500, site), task_end(600, 500_000_000),
        {"Event": "SparkListenerJobEnd", "Job ID": 0, "Completion Time": 2_000},
        {"Event": "SparkListenerJobEnd", "Job ID": 1, "Completion Time": 2_500},
        job_start(2, 4_000), task_end(50, 40_000_000, launched=4_010),
        {"Event": "SparkListenerJobEnd", "Job ID": 2, "Completion Time": 4_250},
    ]
    (tmp_path / "app-1").write_text("".join(json.dumps(event) + "\n" for event in events))

    found = profile.read_event_log(str(tmp_path))
    jobs = found["jobs"]
    assert (found["tasks"], found["run_s"], found["cpu_s"], found["cores"]) == (3, 1.05, 0.84, 2)
    assert profile.by_call_site(jobs) == [("collect at etl/quality.py:68", 2, 2.0),
                                         ("(parquet at NativeMethodAccessorImpl.java:0)", 1, 0.25)]
    # 1.0-2.5 s with two jobs overlapping, then 4.0-4.25 s
    assert profile.union_seconds([(job.started_ms, job.ended_ms) for job in jobs.values()]) == 1.75


def test_a_warm_profile_counts_only_what_started_after_its_run_began(tmp_path):
    profile = load_profile()
    events = [
        job_start(0, 1_000, "count at /x/recpipe/etl/clean.py:1"), task_end(400, 300_000_000, launched=1_100),
        {"Event": "SparkListenerJobEnd", "Job ID": 0, "Completion Time": 2_000},
        job_start(1, 3_000, "count at /x/recpipe/etl/clean.py:1"), task_end(100, 90_000_000, launched=3_100),
        {"Event": "SparkListenerJobEnd", "Job ID": 1, "Completion Time": 3_500},
    ]
    (tmp_path / "app-1").write_text("".join(json.dumps(event) + "\n" for event in events))
    found = profile.read_event_log(str(tmp_path), since_ms=3_000)
    assert list(found["jobs"]) == [1] and (found["tasks"], found["run_s"]) == (1, 0.1)
