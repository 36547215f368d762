"""The champion as its consumers use it, each in processes where recpipe cannot be imported:
a REST endpoint (`mlflow models serve`) and batch scoring in Spark (`mlflow.pyfunc.spark_udf`).
Both must give the scores `CandidateScorer` gives for the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recpipe.names import CHAMPION, RANKER_MODEL
from recpipe.serving.model import build_model
from recpipe.serving.scoring import CandidateScorer, save_vocabulary, save_weights

from tests.conftest import RECPIPE_NOT_LOADED, WITHOUT_RECPIPE, free_port, subprocess_env, wait_for_http
from tests.test_ranker_pyfunc import BRAND_IDX, CANDIDATES, CAT_IDX, CONFIG, ITEM_IDS, ITEM_IDX

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Every history a list (the signature's array<string> takes no null), ids the vocabulary
# knows and does not, an item newer than the network (i45).
ROWS = CANDIDATES.assign(history=[h if h is not None else [] for h in CANDIDATES["history"]],
                         user_dense=[d if d is not None else [] for d in CANDIDATES["user_dense"]])
IDS_ONLY = ["item_id", "history"]
PROCESS_LOG = "BLOCKED_PROCESSES_LOG"  # where each consumer interpreter notes that it blocks recpipe

# Installed as sitecustomize.py on PYTHONPATH: every interpreter the consumer starts (the
# server, its workers, Spark's Python daemon) blocks recpipe from its first line, and says so.
SITECUSTOMIZE = WITHOUT_RECPIPE + textwrap.dedent(f"""
    import os
    if os.environ.get({PROCESS_LOG!r}):
        with open(os.environ[{PROCESS_LOG!r}], "a") as log:
            log.write(json.dumps({{"pid": os.getpid(), "argv": sys.orig_argv}}) + "\\n")
""")


class Champion:
    """A registered version with the `champion` alias in a SQLite store, the scorer built from
    the same files, and an environment for consumer processes that cannot import recpipe."""

    def __init__(self, home: Path):
        self.home = home
        self.uri = f"sqlite:///{home}/mlflow.db"
        self.weights, self.vocabulary = str(home / "weights.pt"), str(home / "vocabulary.npz")
        self.blocker = home / "no-recpipe"
        self.process_log = home / "processes.jsonl"

    def expected(self, frame: pd.DataFrame) -> list[float]:
        return CandidateScorer.from_files(self.weights, self.vocabulary).score(frame).tolist()

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` runs `uvicorn` from the PATH
        return {**subprocess_env(), "MLFLOW_TRACKING_URI": self.uri, "PYTHONPATH": str(self.blocker),
                "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable,
                PROCESS_LOG: str(self.process_log)}

    def blocked_processes(self) -> list[str]:
        """The command lines of the interpreters that installed the blocker."""
        lines = self.process_log.read_text().splitlines() if self.process_log.exists() else []
        return [" ".join(json.loads(line)["argv"]) for line in lines]


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> Champion:
    import mlflow
    from recpipe.ranker.publish import log_ranker_model

    found = Champion(tmp_path_factory.mktemp("consumers"))
    torch.manual_seed(0)
    dense = np.random.default_rng(0).normal(size=(len(ITEM_IDS), CONFIG.item_dense_dim)).astype(np.float32)
    dense[5] = np.nan  # an item without features
    save_weights(found.weights, CONFIG.to_dict(), build_model(CONFIG).state_dict())
    save_vocabulary(found.vocabulary, ITEM_IDS, ITEM_IDX, CAT_IDX, dense, brand_idx=BRAND_IDX)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(found.uri)
    try:
        experiment = mlflow.create_experiment("consumers", artifact_location=f"file://{found.home}/artifacts")
        with mlflow.start_run(experiment_id=experiment):
            logged = log_ranker_model(found.weights, found.vocabulary, CANDIDATES.head(2), registered_name=RANKER_MODEL)
        mlflow.MlflowClient(found.uri).set_registered_model_alias(RANKER_MODEL, CHAMPION, logged["version"])
    finally:
        mlflow.set_tracking_uri(previous)

    found.blocker.mkdir()
    (found.blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # The blocker works: with this environment, importing recpipe fails.
    probe = subprocess.run([sys.executable, "-c", "import recpipe"], env=found.env(), capture_output=True,
                           text=True, timeout=60, cwd=found.home)
    assert probe.returncode != 0 and "recpipe is blocked in this process" in probe.stderr, probe.stderr[-2000:]
    return found


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_champion_scores_over_rest_from_mlflow_models_serve(champion, tmp_path):
    port = free_port()
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow_cli, "models", "serve", "-m", f"models:/{RANKER_MODEL}@{CHAMPION}", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        # Its own process group: stopping the group stops the CLI and the uvicorn it starts.
        server = subprocess.Popen(command, env=champion.env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", server, log_path, 180, "mlflow models serve")

            invocations = f"http://127.0.0.1:{port}/invocations"
            ids_only = ROWS[IDS_ONLY]
            answer = post_json(invocations, {"dataframe_split": ids_only.to_dict(orient="split", index=False)})
            # A Series named `score` comes back as one record per row.
            assert [set(p) for p in answer["predictions"]] == [{"score"}] * len(ROWS)
            scores = [p["score"] for p in answer["predictions"]]
            assert scores == pytest.approx(champion.expected(ids_only), abs=1e-6)

            # The optional columns (a null ALS score, an empty feature list) travel as JSON too.
            with_features = ROWS[IDS_ONLY + ["user_id", "user_dense", "als_score"]]
            answer = post_json(invocations, {"dataframe_split": json.loads(with_features.to_json(orient="split",
                                                                                               index=False))})
            scores = [p["score"] for p in answer["predictions"]]
            assert scores == pytest.approx(champion.expected(with_features), abs=1e-6)
            assert scores != pytest.approx(champion.expected(ids_only), abs=1e-6)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
    # The interpreter that scored (uvicorn's) had recpipe blocked from its start.
    assert any("uvicorn" in argv and "mlflow.pyfunc.scoring_server" in argv for argv in champion.blocked_processes()), \
        champion.blocked_processes()


def test_the_champion_scores_a_spark_dataframe_through_spark_udf(champion, tmp_path):
    frame = ROWS[IDS_ONLY]
    script = WITHOUT_RECPIPE + textwrap.dedent(f"""
        import mlflow.pyfunc
        from pyspark.sql import SparkSession, functions as F, types as T

        spark = (SparkSession.builder.master("local[1]").appName("consumer")
                 .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1")
                 .config("spark.local.dir", {str(tmp_path / "spark-local")!r})
                 .config("spark.sql.warehouse.dir", {str(tmp_path / "warehouse")!r}).getOrCreate())
        schema = T.StructType([T.StructField("row", T.LongType()), T.StructField("item_id", T.StringType()),
                               T.StructField("history", T.ArrayType(T.StringType()))])
        rows = json.loads(sys.stdin.read())
        df = spark.createDataFrame([(i, r["item_id"], r["history"]) for i, r in enumerate(rows)], schema)
        score = mlflow.pyfunc.spark_udf(spark, "models:/{RANKER_MODEL}@{CHAMPION}", env_manager="local",
                                        result_type="double")
        # One struct argument: the model gets a DataFrame with the struct's field names as columns.
        scored = df.withColumn("score", score(F.struct("item_id", "history")))
        out = [r["score"] for r in scored.orderBy("row").collect()]
        spark.stop()
    """) + RECPIPE_NOT_LOADED + 'print(json.dumps({"scores": out}))\n'
    done = subprocess.run([sys.executable, "-c", script], input=frame.to_json(orient="records"), env=champion.env(),
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])["scores"]
    assert scores == pytest.approx(champion.expected(frame), abs=1e-6)
    # Spark's Python workers (forked from its daemon) were started with the blocker in place.
    assert any("pyspark.daemon" in argv for argv in champion.blocked_processes()), champion.blocked_processes()
