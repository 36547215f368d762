"""`recpipe promote --date D` and `recpipe rollback`: who consumers get as `@champion`.

The challenger is the version the train stage of D registered (alias `challenger`, its
run tagged with D). Champion and challenger are loaded from the registry as consumers load
them and score the same rows: the `promote.split` split of `ranker_input/dt=D`, sent in
the consumer's format (string ids). `gate.decide` says whether `champion` moves; the
replaced version keeps the alias `previous`. Every decision is written on the challenger
version as tags and in one log line. Nothing moves unless every step before succeeded.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Iterable, Iterator, Mapping

import numpy as np
from pyspark.sql import SparkSession

from recpipe import paths
from recpipe.baselines import baseline_scores, popularity_index
from recpipe.config import Config
from recpipe.errors import ConfigError, DataError
from recpipe.etl.samples import read_meta
from recpipe.etl.vocabulary import read_vocabulary, vocabulary_reads
from recpipe.names import CHALLENGER, CHAMPION, PREVIOUS, RANKER_EXPERIMENT, RANKER_MODEL
from recpipe.registry.gate import Decision, Scored, check_margins, decide, score_summary
from recpipe.schema import ITEM_ID, ITEM_IDX
from recpipe.serving.consumer import consumer_frame, id_lookup
from recpipe.splits import EVAL_EXTRA, TRAIN_COLUMNS, read_split, split_location
from recpipe.stage import Partition, Stage
from recpipe.tracking import tracking_uri

log = logging.getLogger("recpipe.promote")

PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled_back"
STATUS_TAG = "validation_status"  # on each judged version: the gate's last word on it


def client_for(cfg: Config):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))  # models:/ URIs resolve against the global URI
    return mlflow.MlflowClient(tracking_uri(cfg))


def version_by_alias(client, alias: str, model: str = RANKER_MODEL):
    """The model version holding `alias`, or None (no such alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def challenger_for(client, date: dt.date, model: str = RANKER_MODEL):
    """The challenger version, which must come from a training run of `date`."""
    version = version_by_alias(client, CHALLENGER, model)
    if version is None:
        raise DataError(f"promote {date}: {model} has no '{CHALLENGER}' version; run `recpipe train --date {date}`")
    trained_for = client.get_run(version.run_id).data.tags.get("date")
    if trained_for != date.isoformat():
        raise DataError(f"promote {date}: the '{CHALLENGER}' version {version.version} of {model} was trained for "
                        f"{trained_for}, not {date}; the train stage of {date} did not register a model")
    return version


def trained_version(client, date: dt.date, model: str = RANKER_MODEL) -> str:
    """The version registered by the newest training run of `date`, or "none". What the
    gate of D judges: later nights move `challenger` and `champion` on, and that does not
    make D's decision stale."""
    experiment = client.get_experiment_by_name(RANKER_EXPERIMENT)
    if experiment is None:
        return "none"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.date = '{date.isoformat()}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return "none"
    versions = client.search_model_versions(f"name = '{model}' and run_id = '{runs[0].info.run_id}'")
    return max((v.version for v in versions), key=int, default="none")


def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Score champion and challenger on D's held-out rows, decide, move aliases, record."""
    check_margins(cfg.promote)
    if cfg.promote.checked_rows < 1:
        raise ConfigError(f"promote.checked_rows must be at least 1, got {cfg.promote.checked_rows}: the gate scores "
                          "that many rows as a consumer calls the model, with MLflow's signature check")
    if cfg.promote.rows_per_frame < 1:
        raise ConfigError(f"promote.rows_per_frame must be at least 1, got {cfg.promote.rows_per_frame}")
    client = client_for(cfg)
    challenger = challenger_for(client, date)
    champion = version_by_alias(client, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        log.info("promote %s: version %s is already the champion", date, challenger.version)
        return {"decision": "already_champion", "champion": champion.version}
    if challenger.tags.get(STATUS_TAG) == ROLLED_BACK:  # its tags stay: a rerun must not undo the rollback
        log.info("promote %s: version %s was rolled back; it is not promoted again", date, challenger.version)
        return {"decision": REJECTED, "challenger": challenger.version,
                "champion": champion.version if champion else "none", "reason": "rolled back"}

    arrays, names = gate_rows(spark, cfg, date)
    labels, users = arrays["label"], arrays["user_idx"]
    errors: dict[str, str] = {}
    versions = {"challenger": challenger, **({"champion": champion} if champion is not None else {})}
    per_frame = max(cfg.promote.rows_per_frame, cfg.promote.checked_rows)  # the checked rows lie in the first frame
    scores = predict({who: v.version for who, v in versions.items()}, gate_frames(arrays, names, per_frame),
                     len(labels), errors, cfg.promote.checked_rows)
    scored = {who: score_summary(labels, users, scores[who]) for who in versions}
    baselines = {name: score_summary(labels, users, values)
                 for name, values in baseline_scores(arrays, popularity_index(cfg.ranker, read_meta(cfg, date), date)).items()}
    decision = decide(scored["challenger"], scored.get("champion"), baselines, cfg.promote)
    if errors:
        decision = Decision(decision.promote, decision.reason + "; " + "; ".join(
            f"{who} version could not be loaded or scored: {error}" for who, error in errors.items()))

    record(client, date, challenger, champion, scored, baselines, decision)
    if decision.promote:
        if champion is not None:
            client.set_registered_model_alias(RANKER_MODEL, PREVIOUS, champion.version)
        client.set_registered_model_alias(RANKER_MODEL, CHAMPION, challenger.version)
    now = challenger.version if decision.promote else (champion.version if champion else "none")
    log.info("promote %s: version %s %s (champion: %s); %s", date, challenger.version,
             PROMOTED if decision.promote else REJECTED, now, decision.reason)
    return {
        "decision": PROMOTED if decision.promote else REJECTED,
        "challenger": challenger.version,
        "compared_with": champion.version if champion else "none",  # the champion the challenger was scored against
        "champion": now,
        "reason": decision.reason,
        "rows": int(len(labels)),
        **{f"{who}_{m}": round(getattr(s, m), 4) for who, s in scored.items() for m in ("auc", "gauc")},
    }


def gate_rows(spark: SparkSession, cfg: Config, date: dt.date) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D's held-out rows as arrays (labels, users, baselines and the networks' inputs) and
    the item ids' names (`id_lookup`) that turn them into the consumer's frame."""
    location = split_location(cfg, date, cfg.promote.split)
    if not paths.exists(location):
        raise DataError(f"promote {date}: no '{cfg.promote.split}' split at {location}; run the train stage first")
    arrays = read_split(location, (*TRAIN_COLUMNS, *EVAL_EXTRA))
    if len(arrays["label"]) == 0:
        raise DataError(f"promote {date}: the '{cfg.promote.split}' split at {location} has no rows")
    vocabulary = read_vocabulary(spark, cfg, date)
    return arrays, id_lookup(vocabulary[ITEM_IDX].to_numpy(), vocabulary[ITEM_ID].astype(str).to_numpy())


def gate_frames(arrays: Mapping[str, np.ndarray], names: np.ndarray, rows_per_frame: int) -> Iterator:
    """The consumer's DataFrame of the gate's rows, in order, `rows_per_frame` rows at a
    time: one frame of every row holds each row's ids and features as Python lists in the
    driver at once (at 1.24 M rows the driver peaked at 7.8 GB that way, 2.5 GB in pieces)."""
    rows = len(arrays["label"])
    for start in range(0, rows, rows_per_frame):
        yield consumer_frame(arrays, names, np.arange(start, min(start + rows_per_frame, rows)))


def predict(versions: Mapping[str, str], frames: Iterable, rows: int, errors: dict[str, str],
            checked_rows: int) -> dict[str, np.ndarray]:
    """Scores of registered versions (who → version) for the gate's `rows` rows, each
    loaded as consumers load it; each frame is built once and scored by every version.

    `frames` are consumer DataFrames of the rows in order (`gate_frames`). The first
    `checked_rows` rows of the first frame are scored through the loaded pyfunc's
    `predict`, as a consumer calls it: MLflow checks them against the signature. Every
    row is then scored by the same loaded model without that check, which converts each
    row's array columns one by one (91 % of the consumer path's time on the gate's rows),
    and the checked rows must score the same both ways. A version that cannot be loaded,
    fails to score or disagrees with itself gets NaN rows (so its scores are incomplete
    and nothing is promoted), with the error kept under `errors[who]` for its tags.
    """
    import mlflow

    def failed(who: str, err: Exception) -> None:
        log.error("%s version %s could not score the gate's rows: %s", who, versions[who], err)
        errors[who] = f"{type(err).__name__}: {err}"[:1000]

    models, checked, scores = {}, {}, {}
    for who, version in versions.items():
        try:
            models[who] = mlflow.pyfunc.load_model(f"models:/{RANKER_MODEL}/{version}")
            checked[who], scores[who] = None, []
        except Exception as err:
            failed(who, err)
    for frame in frames:
        for who, model in list(models.items()):
            try:
                if checked[who] is None:
                    checked[who] = np.asarray(model.predict(frame.iloc[:checked_rows]), dtype=np.float64).reshape(-1)
                scores[who].append(np.asarray(model.unwrap_python_model().predict(None, frame),
                                              dtype=np.float64).reshape(-1))
            except Exception as err:
                failed(who, err)
                del models[who]
    out = {who: np.full(rows, np.nan) for who in versions}
    for who in models:
        got = np.concatenate(scores[who]) if scores[who] else np.empty(0)
        first = checked[who] if checked[who] is not None else np.empty(0)
        if len(got) != rows or not np.allclose(first, got[:len(first)], rtol=1e-5, atol=1e-6):
            failed(who, ValueError(f"{len(got)} scores for {rows} rows, or scores of the first {len(first)} rows "
                                   "differ between the pyfunc's predict and its model's"))
        else:
            out[who] = got
    return out


def record(client, date: dt.date, challenger, champion, scored: Mapping[str, Scored],
           baselines: Mapping[str, Scored], decision: Decision) -> None:
    """The decision and the metrics of both models (and the baselines) as version tags."""
    tags = {
        STATUS_TAG: PROMOTED if decision.promote else REJECTED,
        "validation_date": date.isoformat(),
        "validation_reason": decision.reason[:5000],
        "compared_with_version": champion.version if champion is not None else "none",
    }
    for who, summary in {**scored, **{f"baseline_{k}": v for k, v in baselines.items()}}.items():
        tags.update(summary.as_tags(who))
    for key, value in tags.items():
        client.set_model_version_tag(RANKER_MODEL, challenger.version, key, value)


def rollback(cfg: Config) -> dict:
    """Move `champion` back to `previous`; the demoted version is tagged rolled_back."""
    client = client_for(cfg)
    previous = version_by_alias(client, PREVIOUS)
    champion = version_by_alias(client, CHAMPION)
    if previous is None:
        raise DataError(f"rollback: {RANKER_MODEL} has no '{PREVIOUS}' version to go back to")
    client.set_registered_model_alias(RANKER_MODEL, CHAMPION, previous.version)
    client.delete_registered_model_alias(RANKER_MODEL, PREVIOUS)
    if champion is not None:
        client.set_model_version_tag(RANKER_MODEL, champion.version, STATUS_TAG, ROLLED_BACK)
    log.info("rollback: champion %s -> %s", champion.version if champion else "none", previous.version)
    return {"champion": previous.version, "rolled_back": champion.version if champion else "none"}


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """D's held-out split and its samples' meta (the popularity baseline), the vocabulary."""
    return [Partition("ranker_input", date, required=True), Partition("samples", date, required=True),
            *vocabulary_reads(cfg, date)]


STAGE = Stage(
    name="promote",
    help="score champion and challenger on D's held-out rows; move champion if the challenger wins",
    config=("promote", "ranker.popularity_feature"),
    reads=reads,
    writes=lambda cfg, date: [],
    run=run,
    rows=lambda summary: (summary.get("rows"), None),
    registry=lambda cfg, date: {"trained for D": trained_version(client_for(cfg), date)},
    note=lambda summary: f"{summary.get('decision')}; champion {summary.get('champion')}",
)
