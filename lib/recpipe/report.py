"""`recpipe report`: the quality report of a whole-history run, as Markdown.

It reads what `recpipe history` left (the ALS and ranker runs in MLflow, the samples'
metadata, the ranker's valid and test rows) and adds two things of its own:

* the per-user leave-last-out variant of the retrieval protocol: each user with at least
  `history.leave_last_out_min_positives` positives holds out the last one; ALS (same
  settings) and popularity are fitted on everything else and ranked for that one item;
* logloss for the two baselines that score but do not predict (the ALS score and item
  popularity): each is turned into a probability by a one-feature logistic regression
  (Platt scaling) fitted on the valid split, then scored on test like the networks;
* both networks trained `history.report_seeds` times on the run's own split and on
  held-out users (the DIN paper's protocol), each comparison logged as one MLflow run of
  `recpipe-ranker-quality` (`recpipe.ranker.quality`): mean ± std per network and the
  paired difference's 95 % interval, and whether attention's lead is inside the noise.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recpipe import io, paths
from recpipe.als import stage as als_stage
from recpipe.als.evaluate import POSITIVE_TYPES, RELEVANT, popularity_lists, ranked_lists, retrieval_metrics
from recpipe.als.interactions import build_interactions, seen_items
from recpipe.als.topk import top_k_candidates
from recpipe.baselines import popularity_index
from recpipe.config import Config
from recpipe.errors import DataError
from recpipe.etl.samples import read_meta
from recpipe.history import cutoff_date, data_span, whole_history_config
from recpipe.names import ALS_EXPERIMENT, QUALITY_EXPERIMENT, RANKER_EXPERIMENT
from recpipe.schema import ALS_SCORE, EVENT_TYPE, ITEM_DENSE, ITEM_IDX, LABEL, TS, USER_IDX
from recpipe.splits import read_split, split_location

log = logging.getLogger("recpipe.report")

REPORT_KS = (10, 50)
RANKER_METHODS = (("attention", "attention (DIN target attention)"), ("mean", "mean pooling (BaseModel)"),
                  ("als", "ALS score"), ("popularity", "item popularity"))
_HELD_SINCE = "_held_since"


# --- what the history run logged -----------------------------------------------------

def run_metrics(cfg: Config, experiment: str, date: dt.date) -> dict[str, float]:
    """Metrics of the newest finished run of `experiment` tagged with `date`."""
    import mlflow

    from recpipe.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg))
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.date = '{date.isoformat()}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    ) if found else []
    if not runs:
        raise DataError(f"report: no finished {experiment} run for {date}; run `recpipe history` first")
    return dict(runs[0].data.metrics)


# --- leave-last-out retrieval --------------------------------------------------------

def hold_out_last_positive(events: DataFrame, min_positives: int) -> DataFrame:
    """(user_idx, relevant = [item], _held_since): each qualifying user's last positive item,
    and the time from which that user's events are held out (the first event on it)."""
    positives = events.where(F.col(EVENT_TYPE).isin(list(POSITIVE_TYPES)))
    newest_first = Window.partitionBy(USER_IDX).orderBy(F.desc(TS), F.desc(ITEM_IDX))
    last = (
        positives
        .withColumn("_n", F.row_number().over(newest_first))
        .withColumn("_positives", F.count(F.lit(1)).over(Window.partitionBy(USER_IDX)))
        .where((F.col("_n") == 1) & (F.col("_positives") >= min_positives))
        .select(USER_IDX, ITEM_IDX)
    )
    first_touch = events.join(last, [USER_IDX, ITEM_IDX]).groupBy(USER_IDX, ITEM_IDX).agg(F.min(TS).alias(_HELD_SINCE))
    return first_touch.select(USER_IDX, F.array(F.col(ITEM_IDX)).alias(RELEVANT), _HELD_SINCE)


def training_events(events: DataFrame, held: DataFrame) -> DataFrame:
    """Every event but the held-out users' events from their held item's first touch on."""
    return (
        events
        .join(held.select(USER_IDX, _HELD_SINCE), USER_IDX, "left")
        .where(F.col(_HELD_SINCE).isNull() | (F.col(TS) < F.col(_HELD_SINCE)))
        .drop(_HELD_SINCE)
    )


def leave_last_out(spark: SparkSession, cfg: Config, first: dt.date, last: dt.date) -> dict[str, float]:
    """ALS and popularity under per-user leave-last-out, at `REPORT_KS`."""
    events = io.read_days(spark, cfg, "events", first, last)
    held = hold_out_last_positive(events, cfg.history.leave_last_out_min_positives).cache()
    end = last + dt.timedelta(days=1)
    interactions = build_interactions(
        training_events(events, held), cfg.als.confidence_weights, end, (end - first).days
    ).checkpoint()
    model = als_stage.fit_als(interactions, cfg.als, blocks=max(spark.sparkContext.defaultParallelism, 2))
    seen = seen_items(interactions)
    max_k = max(REPORT_KS)
    candidates = top_k_candidates(model.userFactors, model.itemFactors, seen if cfg.als.exclude_seen else None,
                                  max_k, cfg.als.item_block_size, cfg.als.user_block_size)
    relevant = held.select(USER_IDX, RELEVANT)
    methods = {
        "als": ranked_lists(candidates, ALS_SCORE, max_k),
        "popularity": popularity_lists(interactions, seen if cfg.als.exclude_seen else seen.limit(0),
                                       relevant.select(USER_IDX), max_k),
    }
    catalogue_size = als_stage.catalogue_items(spark, cfg, last)
    metrics = {"users": float(held.count()), "interactions": float(interactions.count())}
    for method, predictions in methods.items():
        for name, value in retrieval_metrics(predictions, relevant, REPORT_KS, catalogue_size).items():
            metrics[f"{method}_{name}"] = value
    held.unpersist()
    return metrics


# --- baselines' logloss ----------------------------------------------------------------

def platt_logloss(valid_scores: np.ndarray, valid_labels: np.ndarray, test_scores: np.ndarray,
                  test_labels: np.ndarray) -> float:
    """Logloss on test of a score mapped to a probability by logistic regression on valid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    if len(np.unique(valid_labels)) < 2 or len(test_labels) == 0:
        return float("nan")
    scaler = LogisticRegression(C=1e6).fit(valid_scores.reshape(-1, 1), valid_labels)
    return float(log_loss(test_labels, scaler.predict_proba(test_scores.reshape(-1, 1))[:, 1], labels=[0, 1]))


def baseline_loglosses(cfg: Config, date: dt.date, meta: Mapping) -> dict[str, float]:
    """`test_<baseline>_logloss` of the ALS score and popularity after Platt scaling."""

    popularity = popularity_index(cfg.ranker, meta, date)
    splits = {}
    for split in ("valid", "test"):
        arrays = read_split(split_location(cfg, date, split), (LABEL, ALS_SCORE, ITEM_DENSE))
        splits[split] = (arrays[LABEL].astype(int), {"als": arrays[ALS_SCORE].astype(np.float64),
                                                    "popularity": arrays[ITEM_DENSE][:, popularity].astype(np.float64)})
    (valid_labels, valid), (test_labels, test) = splits["valid"], splits["test"]
    return {f"test_{name}_logloss": platt_logloss(valid[name], valid_labels, test[name], test_labels) for name in test}


# --- the Markdown ----------------------------------------------------------------------

def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def retrieval_table(metrics: Mapping[str, float], methods: Mapping[str, str]) -> list[str]:
    header = " | ".join(f"{m.upper()}@{k}" for k in REPORT_KS for m in ("recall", "ndcg", "map"))
    lines = [f"| | {header} |", "|---" * (1 + 3 * len(REPORT_KS)) + "|"]
    for method, label in methods.items():
        cells = " | ".join(_f(metrics.get(f"{method}_{m}_at_{k}")) for k in REPORT_KS for m in ("recall", "ndcg", "map"))
        lines.append(f"| {label} | {cells} |")
    return lines


def render(*, cutoff: dt.date, first: dt.date, last: dt.date, ingest: Mapping, meta: Mapping,
           als: Mapping[str, float], loo: Mapping[str, float], ranker: Mapping[str, float], command: str,
           seeds: Mapping[str, Mapping] | None = None) -> str:
    rows, positives = meta["rows"], meta["positives"]
    train_days = (cutoff - first).days
    lines = [
        "# Results on MovieLens (ml-latest-small)",
        "",
        f"Produced by `{command}`: the unchanged pipeline on real ratings, run as one whole history.",
        "Every figure below comes from that run; nothing is copied by hand.",
        "",
        "## Data",
        "",
        f"- Source: `{Path(ingest['source']).name}` ({ingest['format']} layout): {ingest['ratings']:,} ratings by "
        f"{ingest['users']:,} users of {ingest['rated_movies']:,} movies; {ingest['catalogue_items']:,} movies in the "
        f"catalogue; {ingest['days']:,} days with ratings, {ingest['first_day']} to {ingest['last_day']}.",
        f"- Labels (the DIN paper's MovieLens rule): every rating is an impression, a rating of 4 or more also a "
        f"click: {ingest['clicks']:,} clicks ({ingest['clicks'] / max(ingest['ratings'], 1):.1%}).",
        f"- Malformed source lines: {ingest['malformed'] or 'none'}.",
        f"- Temporal split at **{cutoff}**: ratings before it train ({first} to {cutoff - dt.timedelta(days=1)}, "
        f"{train_days:,} days), ratings from it on evaluate ({cutoff} to {last}).",
        f"- Ranker rows: train {rows['train']:,} ({positives['train']:,} clicks), valid {rows['valid']:,} "
        f"({positives['valid']:,}), test {rows['test']:,} ({positives['test']:,}); {ranker_split_rule(meta)} "
        f"(`features.eval_split: {meta['eval_split']}`).",
        "",
        "## Candidates: ALS vs popularity",
        "",
        f"Temporal split. Relevant items: each user's clicks (ratings of 4+) from {cutoff} on. Averaged over the "
        f"{int(als['eval_users'])} users who rated after the cut-off *and* have an ALS factor (`als.eval_users: warm`: "
        "ALS cannot rank for a user it never saw; popularity is measured on the same users). Items the user "
        "interacted with before the cut-off are excluded from both lists. "
        f"ALS trained on {int(als['interactions']):,} user-item pairs.",
        "",
        *retrieval_table(als, {"als": "ALS", "popularity": "popularity"}),
        "",
        f"Per-user leave-last-out: each of the {int(loo['users'])} users with at least "
        "two clicks holds out the last one (and everything they did from their first event on that movie on); "
        f"ALS (same settings) and popularity are fitted on the rest ({int(loo['interactions']):,} pairs) and must "
        "rank the one held-out movie, so Recall@K is the hit rate.",
        "",
        *retrieval_table(loo, {"als": "ALS", "popularity": "popularity"}),
        "",
        "## Ranker: target attention vs mean pooling vs the baselines",
        "",
        f"The test split: {int(ranker['test_rows']):,} rows of {int(ranker['test_users'])} users. Every method is "
        "scored on the same rows. gAUC is the impression-weighted mean of per-user AUCs over users with both "
        "labels. The ALS score and popularity are scores, not probabilities: their logloss is after Platt "
        "scaling fitted on the valid split. Each network here is one training (seed `ranker.seed`); one "
        "training cannot separate two networks closer than the seeds' spread, which the next section measures.",
        "",
        "| method | AUC | gAUC | logloss |",
        "|---|---|---|---|",
    ]
    for method, label in RANKER_METHODS:
        lines.append(f"| {label} | {_f(ranker.get(f'test_{method}_auc'))} | {_f(ranker.get(f'test_{method}_gauc'))} | "
                     f"{_f(ranker.get(f'test_{method}_logloss'))} |")
    lines += seeds_section(seeds or {})
    lines += [
        "",
        "## Published reference points, and why they are not the same experiment",
        "",
        "The DIN paper (Zhou et al., KDD 2018, table 3) reports user-weighted AUC on MovieLens-20M: "
        "BaseModel 0.7300, DIN 0.7337, DIN with Dice 0.7348. Those figures are not comparable to the table above:",
        "",
        "- data: MovieLens-20M (138 k users, 20 M ratings) against ml-latest-small (610 users, 100 k ratings);",
        "- split: the paper splits by user (100 k users train, 38 k test), so test users are unseen and their "
        "histories complete; here the split is in time, so training never sees the future;",
        "- features: the paper uses the movie id and its genres for candidate and history; here the category is "
        "the first genre only, and the networks also see dense activity features (and, where ALS ran before the "
        "train days, the ALS score);",
        "- metric: the paper's user-weighted AUC is the gAUC above in spirit (impression-weighted per-user AUC), "
        "over far more users.",
        "",
        "What carries over is the comparison, not the level: attention over the history against mean pooling "
        "with the same budget.",
        "",
    ]
    return "\n".join(lines)


SEED_METHODS, FIXED_METHODS = RANKER_METHODS[:2], RANKER_METHODS[2:]


def seeds_section(comparisons: Mapping[str, Mapping]) -> list[str]:
    """The multi-seed comparison of each split: a table and the verdict on the noise."""
    if not comparisons:
        return []
    from recpipe.ranker.quality import lead_in_words

    first = next(iter(comparisons.values()))
    lines = [
        "",
        f"## The two networks over {len(first['seeds'])} seeds",
        "",
        f"Each network trained with seeds {', '.join(map(str, first['seeds']))} on the same rows, everything else "
        "as above (the best epoch's weights of each training); mean ± std over the seeds. The difference is "
        "paired: attention − mean pooling for each seed, with the 95 % t-interval of its mean. Each comparison "
        f"is the MLflow run named below, in `{QUALITY_EXPERIMENT}`.",
    ]
    for label, comparison in comparisons.items():
        values = comparison["figures"]
        lines += [
            "",
            f"### {comparison['title']}",
            "",
            f"{comparison['rule'][0].upper()}{comparison['rule'][1:]}. Test: {comparison['test_rows']:,} rows of "
            f"{comparison['test_users']:,} users. Run `{comparison['run_id']}`.",
            "",
            "| method | AUC | gAUC |",
            "|---|---|---|",
        ]
        for method, name in SEED_METHODS:
            lines.append(f"| {name} | {_f(values[f'{method}_auc'])} ± {_f(values[f'{method}_auc_std'])} | "
                         f"{_f(values[f'{method}_gauc'])} ± {_f(values[f'{method}_gauc_std'])} |")
        for method, name in FIXED_METHODS:
            lines.append(f"| {name} | {_f(values[f'{method}_auc'])} | {_f(values[f'{method}_gauc'])} |")
        lines += ["", f"{lead_in_words(values, 'gauc')} {lead_in_words(values, 'auc')}"]
    return lines


def seed_comparisons(spark: SparkSession, cfg: Config, cutoff: dt.date, meta: Mapping) -> dict[str, dict]:
    """Both networks over `history.report_seeds` seeds on the run's own split and, unless
    that already is it, on held-out users; each logged as a run of QUALITY_EXPERIMENT.
    Empty when `report_seeds` is 0."""
    if cfg.history.report_seeds <= 0:
        return {}
    from recpipe.ranker import quality  # torch and Petastorm only when the report trains

    setups = {meta["eval_split"]: (quality.scratch_config(cfg, meta["eval_split"]), meta)}
    if meta["eval_split"] != quality.HOLDOUT:
        holdout = quality.holdout_config(cfg)
        quality.write_holdout_samples(spark, cfg, holdout, cutoff)
        setups[quality.HOLDOUT] = (holdout, read_meta(holdout, cutoff))
    out = {}
    for label, (split_cfg, split_meta) in setups.items():
        comparison = quality.compare(spark, split_cfg, cutoff, cfg.history.report_seeds)
        comparison["figures"] = quality.figures(comparison)
        comparison["rule"] = ranker_split_rule(split_meta)
        comparison["title"] = ("Held-out users" if label == quality.HOLDOUT
                               else "The run's own split")
        comparison["run_id"] = log_comparison(cfg, cutoff, label, comparison)
        out[label] = comparison
    return out


def log_comparison(cfg: Config, cutoff: dt.date, label: str, comparison: Mapping) -> str:
    """One MLflow run: the seeds as a parameter, every figure, and each seed's AUC and gAUC
    as steps of `<network>_seed_<metric>`; returns its id."""
    import mlflow

    from recpipe.tracking import start_run

    with start_run(cfg, QUALITY_EXPERIMENT, f"seeds-{label}-{cutoff}",
                   tags={"date": cutoff.isoformat(), "eval_split": label}) as run:
        mlflow.log_params({"seeds": ",".join(map(str, comparison["seeds"])), "test_rows": comparison["test_rows"]})
        mlflow.log_metrics(comparison["figures"])
        for network, results in comparison["runs"].items():
            for step, result in enumerate(results):
                mlflow.log_metrics({f"{network}_seed_auc": result["auc"], f"{network}_seed_gauc": result["gauc"]},
                                   step=step)
    return run.info.run_id


def ranker_split_rule(meta: Mapping) -> str:
    """How the samples' `_meta.json` says the ranker rows were split, in words."""
    share = float(meta["valid_share"])
    if meta["eval_split"] == "user_holdout":
        return (f"a seeded hash of the user holds out {float(meta['holdout_share']):.0%} of the users, and every "
                f"rating of theirs, before the cut-off too, evaluates ({share:.0%} of them valid, the rest test); "
                "the other users' ratings train (the DIN paper's protocol)")
    if meta["eval_split"] == "time":
        return f"the first {share:.0%} of the evaluation period is valid, the rest test"
    return f"the raters after the cut-off are split by a seeded hash of the user, {share:.0%} of them valid"


def write_results(spark: SparkSession, cfg: Config, cutoff: dt.date | None, output: str,
                  command: str = "make report") -> str:
    """Gather the history run's figures, add leave-last-out and the baselines' logloss,
    write the Markdown to `output`; returns its path."""
    cutoff = cutoff_date(cfg, cutoff)
    first, last = data_span(cfg, cutoff)
    history_cfg = whole_history_config(cfg, cutoff, first, last)
    spark.sparkContext.setCheckpointDir(paths.join_uri(cfg.paths.root, "_checkpoints", "report"))
    meta = read_meta(history_cfg, cutoff)
    ranker = run_metrics(cfg, RANKER_EXPERIMENT, cutoff)
    ranker.update(baseline_loglosses(history_cfg, cutoff, meta))
    text = render(
        cutoff=cutoff, first=first, last=last,
        ingest=json.loads(paths.read_bytes(cfg.table_path("ingest_report"))),
        meta=meta,
        als=run_metrics(cfg, ALS_EXPERIMENT, cutoff),
        loo=leave_last_out(spark, history_cfg, first, last),
        ranker=ranker,
        command=command,
        seeds=seed_comparisons(spark, history_cfg, cutoff, meta),
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    log.info("report for %s written to %s", cutoff, output)
    return output
