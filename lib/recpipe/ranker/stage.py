"""`recpipe train --date D`: the attention ranker, end to end.

1. Spark: day D's samples + leak-free ALS scores → `ranker_input/dt=D` (Petastorm-ready),
   vocabulary sizes and normalisation statistics from its train split (`inputs`).
2. DDP: TorchDistributor runs `trainer.train` on `ranker.num_processes` ranks for the
   attention model and, with the same budget, the mean-pooling BaseModel; rank 0 logs
   per-epoch metrics into this stage's MLflow run (URI and run id passed explicitly).
3. Driver: both networks, the ALS score, popularity and (generated data) the oracle on
   the same rows of the test split; ROC, training curves and an attention heat-map.
4. MLflow: the attention model as a self-contained pyfunc, registered as
   `attention-ranker` with the alias `challenger`.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
from pyspark.sql import SparkSession

from recpipe import tables
from recpipe.baselines import popularity_index
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.samples import TEST, TRAIN, read_meta
from recpipe.etl.vocabulary import read_vocabulary, snapshot_reads, vocabulary_reads
from recpipe.names import RANKER_EXPERIMENT
from recpipe.ranker.inputs import als_runs, build_ranker_input
from recpipe.splits import EVAL_EXTRA, TRAIN_COLUMNS, read_split, row_groups, split_location
from recpipe.stage import Option, Partition, Stage, total
from recpipe.timing import Parts

log = logging.getLogger("recpipe.ranker")



@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Build the inputs, train both models with DDP, evaluate on the test split, register.

    Returns:
        Rows per split, steps, the test metrics and the registered version.
    """
    # PyTorch and MLflow load here, when the stage runs, not when the CLI lists the stages.
    from recpipe.ranker.ddp import launch, load_trained, make_job
    from recpipe.ranker.evaluate import evaluate_and_plot
    from recpipe.ranker.provenance import log_run_inputs, run_tags
    from recpipe.ranker.publish import publish
    from recpipe.ranker.settings import ATTENTION, MEAN, check_config, model_config

    rc = cfg.ranker
    check_config(rc)
    parts = Parts()
    meta = read_meta(cfg, date)
    popularity = popularity_index(rc, meta, date)
    with parts("ranker_input"):
        stats = build_ranker_input(spark, cfg, date, meta,
                                   min_files=max(cfg.features.min_files_per_split, rc.num_processes))
    train_groups = row_groups(split_location(cfg, date, TRAIN))
    if train_groups < rc.num_processes:
        raise DataError(f"train: {train_groups} row groups in the train split for {rc.num_processes} ranks; "
                        "Petastorm shards by row group, so every rank needs at least one")
    log.info("ranker_input for %s: rows %s, vocab items %d, categories %d", date, stats.rows, stats.item_vocab,
             stats.cat_vocab)

    import mlflow

    from recpipe.tracking import start_run, tracking_uri

    uri = tracking_uri(cfg)
    with start_run(cfg, RANKER_EXPERIMENT, run_name=f"ranker-{date}", tags=run_tags(cfg, date)) as active:
        log_run_inputs(spark, cfg, date, rc, stats, meta)
        jobs = []
        for name in [ATTENTION, MEAN] if rc.compare_base_model else [ATTENTION]:
            config = model_config(rc, stats, meta, name, date)
            mlflow.log_params({f"{name}.use_als_score": config.use_als_score, f"{name}.pooling": config.pooling})
            jobs.append(make_job(cfg, date, name, config, stats, uri, active.info.run_id))
        with parts("train_networks"):  # both networks in one launch, its start-up included
            results = {result["name"]: result for result in launch(jobs, rc)}
        for name, result in results.items():
            log.info("%s: %d steps over %d epochs on %d ranks", name, result["steps"], result["epochs"],
                     result["world_size"])
        models = {name: load_trained(result["checkpoint"]) for name, result in results.items()}
        metrics = {f"{name}_steps": float(r["steps"]) for name, r in results.items()}
        with parts("evaluate"):  # the fitted oracle's part is inside it
            test = (read_split(split_location(cfg, date, TEST), (*TRAIN_COLUMNS, *EVAL_EXTRA))
                    if stats.rows[TEST] else None)
            vocabulary = read_vocabulary(spark, cfg, date)
            if test is not None:
                metrics.update(evaluate_and_plot(cfg, date, rc, popularity, models, results, test, vocabulary, parts))
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        with parts("publish"):
            registered = publish(spark, cfg, date, rc, results[ATTENTION], vocabulary, test)
        mlflow.log_metrics(parts.seconds)
    log.info("train %s: seconds per part: %s", date, parts.describe())
    return {"rows": stats.rows, "run_id": active.info.run_id, **registered, **parts.seconds,
            **{k: round(v, 4) for k, v in metrics.items() if k.endswith(("_auc", "_gauc", "_steps"))}}


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """D's samples, the ALS runs that score them, the vocabulary and the users' ids."""
    return [Partition("samples", date, required=True), *[Partition("als", day) for day in als_runs(cfg, date)],
            *vocabulary_reads(cfg, date), *snapshot_reads(cfg, date, ("dim_users",))]


STAGE = Stage(
    name="train",
    help="train the attention ranker with DDP on the samples of D, evaluate, register a challenger",
    config=("ranker", "features.min_files_per_split"),
    reads=reads,
    writes=lambda cfg, date: [Partition("ranker_input", date)],
    run=run,
    rows=lambda summary: (total(summary.get("rows")), None),
    options=(Option(("--resume",), dict(dest="overrides", action="append_const", const="ranker.resume=true",
                                        help="continue from the last checkpoint of day D")),),
)
