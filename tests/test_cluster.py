"""Cluster mode on a real Spark standalone cluster on 127.0.0.1 (master and two workers from
the installed pyspark) and a real `mlflow server`, through the make targets people use:
`make cluster-up`, `make run-cluster` (every stage its own spark-submit application, DDP
ranks as barrier tasks on the executors), `make cluster-down`.

- The cluster run's ETL tables equal a local run's on the same data (content checksums),
  its ALS metrics are the same and its ranker metrics within RANKER_TOLERANCE.
- Runs and artifacts go through the tracking server and read back over its REST API.
- A worker JVM killed by its process id in the middle of `clean`: Spark retries the lost
  tasks on the surviving worker and the output equals an undisturbed run's.

- The ranker's training function as two DDP ranks in barrier tasks, one on each worker's
  executor (TorchDistributor, local_mode=False), on toy data.

The whole `make run-cluster` comparison is opt-in (RECPIPE_TEST_CLUSTER_RUN=1, 6 to 11
minutes on 2 cores); cluster-up/down, the barrier DDP ranks, a submitted stage, the kill
and the server run always.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import LOCAL_CONF, REPO, content_digest, day_folder, free_port, mlflow_server, network_settings, ranker_settings, subprocess_env

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.generate, pytest.mark.ddp, pytest.mark.timeout(1800)]

TINY = [
    "generate.users=400", "generate.items=150", "generate.categories=6", "generate.days=3",
    "features.train_days=1", "features.min_files_per_split=1", "als.train_days=1", "als.rank=4", "als.max_iter=2",
    "als.top_k=20", "als.eval_ks=[10]", "als.register_model=false", "ranker.reader_workers=1", "ranker.progress=false",
    "ranker.epochs=1", "ranker.compare_base_model=false", "ranker.batch_size=256", "spark.shuffle_partitions=4",
    # The stages whose work runs on the executors. promote and score only read the registry and
    # score on the driver; on data this small the first model cannot beat popularity, so the
    # gate would (rightly) leave score without a champion.
    "nightly.stages=[clean,features,als,train]",
    # Only test_ranker_stage checks the fitted oracle; elsewhere it would only cost time.
    "fitted_oracle.enabled=false",
]
# Short-lived JVMs on 2 cores: the C1 compiler alone starts them faster (the default C2
# pays off only in long jobs), and one GC thread leaves the cores to the work.
FAST_JVM = "'-XX:TieredStopAtLevel=1 -XX:+UseSerialGC'"


def submit_conf(log_level: str = "WARN", more: dict[str, str] | None = None) -> str:
    """The --set for submit.conf: fast JVMs, the log level, and `more` Spark settings."""
    extra = "".join(f", {key}: '{value}'" for key, value in (more or {}).items())
    return f"submit.conf={{spark.log.level: {log_level}, spark.driver.extraJavaOptions: {FAST_JVM}, " \
           f"spark.executor.extraJavaOptions: {FAST_JVM}{extra}}}"


SUBMIT_CONF = submit_conf()
# Tables of D compared row for row between the cluster run and the local run.
ETL_TABLES = ["events", "rejects", "dim_users", "dim_items", "dim_categories", "dim_brands", "catalogue", "user_features",
              "item_features", "sequences", "samples"]
# Ranker test metrics may differ this much (absolute): the ranks read their row groups on
# other processes, and float reductions in training need not run in the same order.
RANKER_TOLERANCE = 0.02
MAKE_TIMEOUT_S = 1500
# The whole `make run-cluster` takes 6 to 11 minutes on 2 cores (eight applications, each
# with a cold driver and two cold executors), more than the suite can spend: opt in.
full_run = pytest.mark.skipif(os.environ.get("RECPIPE_TEST_CLUSTER_RUN") != "1",
                              reason="runs the whole `make run-cluster` (6 to 11 min); set RECPIPE_TEST_CLUSTER_RUN=1")


def make(target: str, profile, timeout_s: int = 300) -> subprocess.CompletedProcess:
    env = subprocess_env()
    venv = os.path.dirname(os.path.dirname(sys.executable))
    return subprocess.run(["make", "--no-print-directory", target, f"VENV={venv}", f"CLUSTER_CONF={profile}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def write_profile(cfg, folder) -> str:
    """cfg as a profile of its own (base.yaml beside it), for make's CLUSTER_CONF."""
    import shutil

    import yaml

    folder.mkdir()
    shutil.copy(REPO / "conf" / "base.yaml", folder / "base.yaml")
    (folder / "cluster.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return str(folder / "cluster.yaml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`make dist`, then `make cluster-up` with free ports and a tracking server; `make cluster-down` after."""
    from recpipe import cluster as local_cluster
    from recpipe.config import load_config

    home = tmp_path_factory.mktemp("cluster")
    master_port, tracking_port = free_port(), free_port()
    settings = [
        f"paths.root={home / 'root'}", f"cluster.run_dir={home / 'run'}", f"cluster.master_port={master_port}",
        f"cluster.master_webui_port={free_port()}", "cluster.worker_memory=1g",
        f"spark.master=spark://127.0.0.1:{master_port}", f"mlflow.tracking_uri=http://127.0.0.1:{tracking_port}",
        SUBMIT_CONF,
    ]
    cfg = load_config(REPO / "conf" / "cluster.yaml", [*settings, *TINY])
    profile = write_profile(cfg, home / "conf")
    built = make("dist", profile)  # the wheel every submitted job ships (`make run-cluster` builds it too)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    with mlflow_server(cfg, tracking_port, home / "server.log") as server_home:
        started = make("cluster-up", profile)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        pids = [p["pid"] for p in local_cluster.read_state(cfg)["processes"]]
        try:
            yield {"cfg": cfg, "settings": settings, "profile": profile, "home": home, "server_home": server_home,
                   "pids": pids}
        finally:
            stopped = make("cluster-down", profile)
            assert stopped.returncode == 0, stopped.stderr[-3000:]
            assert f"stopped processes {', '.join(map(str, reversed(pids)))}" in stopped.stdout
            assert not any(local_cluster._alive(pid) for pid in pids)


@pytest.fixture(scope="module")
def local_run(spark, tmp_path_factory):
    """What `make run` does, in this process, on the same data."""
    from recpipe import stages
    from recpipe.config import load_config
    from recpipe.generate import run as generate
    from recpipe.nightly import nightly
    from recpipe.pipeline import run_stages

    cfg = load_config(LOCAL_CONF, [f"paths.root={tmp_path_factory.mktemp('local') / 'root'}", *TINY])
    generate(cfg)
    D = cfg.generate.dates[-1]
    run_stages(cfg, cfg.generate.dates[:-1], [stages.get("clean")])
    run_stages(cfg, [D - dt.timedelta(days=cfg.features.train_days)], [stages.get("als")])
    outcomes = nightly(cfg, [D])
    assert {o.status for o in outcomes} == {"ok"}
    return cfg, D


@pytest.fixture(scope="module")
def cluster_run(cluster):
    submitted = make("run-cluster", cluster["profile"], timeout_s=MAKE_TIMEOUT_S)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-6000:]
    return submitted


def run_of(uri: str, experiment: str, date: dt.date):
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                filter_string=f"tags.date = '{date}'")
    return run


@full_run
def test_make_run_cluster_gives_the_local_runs_tables_and_metrics(cluster, cluster_run, local_run):
    from recpipe.tracking import tracking_uri

    local_cfg, D = local_run
    cfg = cluster["cfg"]
    for table in ETL_TABLES:
        assert content_digest(day_folder(cfg, table, D)) == content_digest(day_folder(local_cfg, table, D)), table
    quality = [json.loads(open(os.path.join(day_folder(c, "quality", D), "quality.json")).read()) for c in (cfg, local_cfg)]
    assert quality[0]["rejected_by_reason"] == quality[1]["rejected_by_reason"]

    cluster_uri, local_uri = tracking_uri(cfg), tracking_uri(local_cfg)
    als = [run_of(uri, "recpipe-als", D).data.metrics for uri in (cluster_uri, local_uri)]
    assert {k: v for k, v in als[0].items() if "seconds" not in k} == \
        pytest.approx({k: v for k, v in als[1].items() if "seconds" not in k}, abs=1e-9)
    ranker = [run_of(uri, "recpipe-ranker", D).data.metrics for uri in (cluster_uri, local_uri)]
    for metric in ("test_attention_auc", "test_attention_gauc", "test_attention_logloss"):
        assert ranker[0][metric] == pytest.approx(ranker[1][metric], abs=RANKER_TOLERANCE), metric


@full_run
def test_every_stage_was_its_own_application_and_ddp_ran_on_the_executors(cluster, cluster_run):
    master_log = (cluster["home"] / "run" / "master.log").read_text()
    for job in ("pipeline", "als", "clean", "features", "train"):
        assert f"Registering app recpipe-{job}" in master_log, job
    # TorchDistributor in barrier mode: the two ranks are barrier tasks on the two workers' executors.
    assert "Started distributed training with 2 executor processes" in cluster_run.stderr
    synced = {f.parts[-4] for f in (cluster["home"] / "run").glob("worker-*/app-*/*/stderr")
              if "has entered the global sync" in f.read_text(errors="replace")}
    assert synced == {"worker-0", "worker-1"}


# A driver of its own (the test session already holds a local SparkContext) that runs two DDP
# ranks of the ranker's training function as barrier tasks on the cluster's executors.
BARRIER_DRIVER = """
import json, sys
from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import SparkSession
from recpipe.ranker.trainer import TrainJob, train_each

master, spec = sys.argv[1], json.loads(sys.argv[2])
spark = SparkSession.builder.master(master).appName("recpipe-ddp-check").getOrCreate()
# As the train stage launches its networks: train_each, here with one job.
result, = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(train_each, [TrainJob(**spec)])
print(json.dumps({"app": spark.sparkContext.applicationId, "world_size": result["world_size"],
                  "steps": result["steps"], "checksums": result["checksums"]}))
spark.stop()
"""


def test_ddp_ranks_run_as_barrier_tasks_on_both_workers_executors(cluster, tmp_path):
    """What `make run-cluster`'s train stage does with `ranker.local_mode: false`, on toy data:
    cheap enough for every run of the suite, where the whole `make run-cluster` is opt-in."""
    from recpipe.ranker.toy import toy_model_config, write_toy_split

    rows = write_toy_split(str(tmp_path / "train"), [200, 200, 200, 200], files=2)
    spec = dict(name="attention", model_config=toy_model_config(network_settings()).to_dict(), train_location=str(tmp_path / "train"),
                valid_location="", train_rows=rows, checkpoint_dir=str(tmp_path / "ckpt"),
                **ranker_settings(global_batch_size=64, epochs=1, shuffle_queue=256, reader_workers=1, progress=False,
                                  seed=3))
    # Outside spark-submit, spark.pyspark.python is not read: the executors' Python comes from the environment.
    env = {**subprocess_env(), "PYSPARK_PYTHON": sys.executable}
    driver = subprocess.run([sys.executable, "-c", BARRIER_DRIVER, cluster["cfg"].spark.master, json.dumps(spec)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-6000:]
    result = json.loads(driver.stdout.strip().splitlines()[-1])

    assert result["world_size"] == 2 and result["steps"] == 13
    assert len(result["checksums"]) == 2 and result["checksums"][0] == result["checksums"][1]
    synced = {f.parts[-4] for f in (cluster["home"] / "run").glob(f"worker-*/{result['app']}/*/stderr")
              if "has entered the global sync" in f.read_text(errors="replace")}
    assert synced == {"worker-0", "worker-1"}


@pytest.fixture(scope="module")
def killed_clean(spark, cluster, packed_env, tmp_path_factory):
    """`recpipe clean` submitted to the cluster with the executors' Python from the archive
    `make pack` built (`spark.archives` …#env, `submit.python=./env/bin/python`), its second
    worker's JVM killed (by process id) a few stages into the job; and the same day cleaned
    undisturbed in local mode. Requested after the full run's tests: it leaves the cluster
    with one worker."""
    from recpipe.config import load_config
    from recpipe.etl import clean
    from recpipe.generate import run as generate

    home = tmp_path_factory.mktemp("killed-clean")
    day_settings = ["generate.users=1500", "generate.items=400", "generate.days=1", "spark.shuffle_partitions=8"]
    roots = {name: home / name for name in ("undisturbed", "killed")}
    for root in roots.values():
        manifest = generate(load_config(LOCAL_CONF, [f"paths.root={root}", *day_settings]))
    day = next(iter(manifest["days"]))
    clean.run(spark, load_config(LOCAL_CONF, [f"paths.root={roots['undisturbed']}", *day_settings]),
              dt.date.fromisoformat(day))

    victim = cluster["pids"][-1]  # the second worker's JVM
    command = [sys.executable, "-m", "recpipe.cli", "clean", "--conf", cluster["profile"], "--date", day]
    from_archive = ["submit.python=./env/bin/python",
                    submit_conf("INFO", {"spark.archives": f"{packed_env['archive']}#env"})]
    for setting in [*day_settings, f"paths.root={roots['killed']}", *from_archive]:
        command += ["--set", setting]
    env = subprocess_env()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, killed = [], False
    deadline = time.monotonic() + 600
    for line in process.stdout:
        output.append(line)
        started = re.search(r"Starting task \S+ in stage (\d+)\.", line)
        if not killed and started and int(started.group(1)) >= 4:  # tasks on both executors by now
            os.kill(victim, signal.SIGKILL)
            killed = True
        if time.monotonic() > deadline:
            process.kill()
            break
    process.wait(timeout=60)
    text = "".join(output)
    app = re.search(r"Connected to Spark cluster with app ID (app-\S+)", text)
    return {"day": day, "roots": roots, "killed": killed, "returncode": process.returncode, "output": text,
            "app": app and app.group(1)}


def test_a_worker_killed_mid_clean_is_survived_and_the_output_is_unchanged(killed_clean):
    text, day, roots = killed_clean["output"], killed_clean["day"], killed_clean["roots"]
    assert killed_clean["killed"], "the job ended before the kill: " + text[-3000:]
    assert killed_clean["returncode"] == 0, text[-6000:]
    assert re.search(r"Lost executor|Executor lost|Removed executor|Executor \S+ removed", text), text[-3000:]
    from recpipe.config import load_config

    cfgs = {name: load_config(LOCAL_CONF, [f"paths.root={roots[name]}"]) for name in ("killed", "undisturbed")}
    for table in ("events", "rejects"):
        date = dt.date.fromisoformat(str(day))
        assert content_digest(day_folder(cfgs["killed"], table, date)) == \
            content_digest(day_folder(cfgs["undisturbed"], table, date)), table


def test_the_submitted_clean_ran_its_python_workers_from_the_packed_archive(cluster, killed_clean):
    """clean checks that each raw .gz file reads to its end in Python tasks (check_files), so
    its executors start Python workers: with spark.pyspark.python=./env/bin/python there is no
    other Python they could have used, and each executor unpacked the archive as env/."""
    assert killed_clean["returncode"] == 0 and killed_clean["app"], killed_clean["output"][-3000:]
    executors = list((cluster["home"] / "run").glob(f"worker-*/{killed_clean['app']}/*"))
    unpacked = [e for e in executors if (e / "env" / "bin" / "python").exists()]
    # the surviving worker's executor ran the job to its end (the killed one may have died first)
    assert "worker-0" in {e.parts[-3] for e in unpacked}, executors
    site = "lib/python{}.{}/site-packages".format(*sys.version_info[:2])
    assert all((e / "env" / site / "recpipe" / "__init__.py").is_file() for e in unpacked)


def test_the_submitted_run_and_its_artifacts_went_through_the_tracking_server(cluster, killed_clean):
    uri, day = cluster["cfg"].mlflow.tracking_uri, killed_clean["day"]

    def get_json(url: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    experiment = get_json(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=recpipe-etl")
    runs = get_json(f"{uri}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment"]["experiment_id"]], "filter": f"tags.date = '{day}'"})["runs"]
    assert runs and all(r["info"]["status"] == "FINISHED" for r in runs)
    assert all(r["info"]["artifact_uri"].startswith("mlflow-artifacts:") for r in runs)
    # Artifacts were uploaded to the server's destination; nobody wrote a store of its own.
    assert any(p.name == "quality.json" for p in (cluster["server_home"] / "artifacts").rglob("*"))
    assert not (killed_clean["roots"]["killed"] / "mlflow").exists()


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line holds `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def active_apps(cluster) -> list[str]:
    port = cluster["cfg"].cluster.master_webui_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=10) as response:
        return [app["name"] for app in json.load(response)["activeapps"]]


def test_sigterm_to_a_submit_mode_nightly_stops_its_application_before_the_lock_is_released(cluster, tmp_path):
    import uuid

    from recpipe.config import load_config
    from recpipe.generate import run as generate
    from recpipe.lock import root_lock

    root, app = tmp_path / "root", f"sigterm-{uuid.uuid4().hex[:8]}"
    day_settings = ["generate.users=1500", "generate.items=400", "generate.days=1"]
    manifest = generate(load_config(LOCAL_CONF, [f"paths.root={root}", *day_settings]))
    day = next(iter(manifest["days"]))
    command = [sys.executable, "-m", "recpipe.cli", "nightly", "--conf", cluster["profile"], "--date", day]
    for setting in [*day_settings, f"paths.root={root}", f"spark.app_name={app}", "nightly.stages=[clean]",
                    submit_conf("INFO")]:
        command += ["--set", setting]
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output, sent = [], False
    deadline = time.monotonic() + 300
    for line in process.stdout:
        output.append(line)
        if not sent and "Starting task" in line:  # the application is running on the executors
            assert f"{app}-clean" in active_apps(cluster)
            process.send_signal(signal.SIGTERM)
            sent = True
        if time.monotonic() > deadline:
            break
    returncode = process.wait(timeout=60)
    text = "".join(output)
    assert sent, text[-3000:]
    assert returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "stopping the submitted application" in text
    assert processes_mentioning(app) == [], "spark-submit or its driver outlived the nightly"
    gone_by = time.monotonic() + 30  # the master notices a driver that went away within seconds
    while f"{app}-clean" in active_apps(cluster) and time.monotonic() < gone_by:
        time.sleep(1)
    assert f"{app}-clean" not in active_apps(cluster)
    with root_lock(load_config(cluster["profile"], [f"paths.root={root}"]), "the next nightly"):
        pass  # taken at once: the stopped run released it
