"""The `recpipe` command line: one sub-command per stage, all sharing --conf and --set.

Every sub-command loads the layered config, sets up logging and calls one library
function; `jobs/*.py` call the same functions under spark-submit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from typing import Callable, Sequence

from recpipe.config import Config, load_config, parse_date
from recpipe.errors import RecpipeError
from recpipe.logs import setup_logging

log = logging.getLogger("recpipe.cli")

DEFAULT_CONF = "conf/local.yaml"


def date_arg(text: str) -> dt.date:
    """argparse type for --date: a real calendar date written YYYY-MM-DD."""
    try:
        return parse_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default=DEFAULT_CONF, help=f"profile YAML, layered over base.yaml beside it (default {DEFAULT_CONF})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key; repeatable")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _with_date(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, type=date_arg, help="the day D to process, YYYY-MM-DD")


def cmd_generate(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.generate import run

    manifest = run(cfg)
    totals = manifest["totals"]
    log.info("wrote %d lines (%d clean events) for %d days under %s",
             totals["lines"], totals["clean_events"], len(manifest["days"]), cfg.table_path("raw_events"))


def spark_stage(stage: str) -> Callable[[Config, argparse.Namespace], None]:
    """A handler that builds the stage's Spark session and runs the stage for --date."""

    def handler(cfg: Config, args: argparse.Namespace) -> None:
        from recpipe.pipeline import run_stages
        from recpipe.submit import session_for

        result = run_stages(session_for(cfg, stage), cfg, [args.date], [stage])[0]
        logging.getLogger(f"recpipe.{stage}").info("done for %s: %s", args.date, result.summary)
        write_summary(args, result.summary)

    return handler


def write_summary(args: argparse.Namespace, summary: object) -> None:
    """--summary-json: how a submitted job hands its summary back to the submitting process."""
    if args.summary_json:
        with open(args.summary_json, "w") as out:
            json.dump(summary, out, default=str)


def cmd_pipeline(cfg: Config, args: argparse.Namespace) -> None:
    import dataclasses

    from recpipe.pipeline import StageResult, date_range, format_results, parse_stages, run_stages
    from recpipe.spark import get_spark
    from recpipe.submit import submit, submitting

    generated = cfg.generate.dates
    dates = date_range(args.start or generated[0], args.end or generated[-1])
    stages = parse_stages(args.stages)
    if submitting(cfg):  # the whole range as one application, not one per stage and day
        returned = submit(cfg, "pipeline", ["--start", dates[0].isoformat(), "--end", dates[-1].isoformat(),
                                            "--stages", ",".join(stages)])
        results = [StageResult(**{**r, "date": dt.date.fromisoformat(r["date"])}) for r in returned]
    else:
        results = run_stages(get_spark(cfg, "pipeline"), cfg, dates, stages)
    print(format_results(results))
    write_summary(args, [dataclasses.asdict(r) for r in results])


def cmd_rollback(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.registry.promote import rollback

    result = rollback(cfg)
    print(f"champion is now version {result['champion']} (version {result['rolled_back']} rolled back)")


def cmd_recommend(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.registry.recommend import recommend
    from recpipe.spark import get_spark

    listed = recommend(get_spark(cfg, "recommend"), cfg, args.user, args.date)
    print(f"user {args.user}, recommendations of {listed.attrs['date']} "
          f"(model version {listed['model_version'].iloc[0]}):")
    for row in listed.itertuples():
        print(f"{row.rank:>4}  {row.item_id:<14} {row.score:.4f}  because of: {row.because}")


def cmd_nightly(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.nightly import nightly

    nightly(cfg, [args.date], force=args.force, from_stage=args.from_stage)


def cmd_backfill(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.nightly import nightly
    from recpipe.pipeline import date_range

    if args.promote_last:
        args.overrides.append("nightly.promote_backfill=true")
        cfg = load_config(args.conf, args.overrides)
    nightly(cfg, date_range(args.start, args.end), force=args.force, from_stage=args.from_stage,
            promote_last_only=True)


def cmd_mlflow_server(cfg: Config, args: argparse.Namespace) -> None:
    import os

    from recpipe.tracking import server_command

    command = server_command(cfg, port=args.port)
    print(f"MLflow tracking server: http://127.0.0.1:{args.port} (process {os.getpid()}; Ctrl-C stops it)")
    print(f"use it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:{args.port}", flush=True)
    os.execv(command[0], command)


def cmd_ingest_movielens(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.ingest.movielens import ingest

    report = ingest(cfg, args.source)
    print(f"{report['ratings']:,} ratings ({report['clicks']:,} clicks) over {report['days']:,} days "
          f"{report['first_day']}..{report['last_day']}, {report['catalogue_items']:,} movies; "
          f"malformed: {report['malformed'] or 'none'}; report {cfg.table_path('ingest_report')}")


def cmd_history(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.history import run
    from recpipe.pipeline import format_results
    from recpipe.spark import get_spark

    print(format_results(run(get_spark(cfg, "history"), cfg, args.cutoff)))


def cmd_report(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.report import write_results
    from recpipe.spark import get_spark

    print(f"wrote {write_results(get_spark(cfg, 'report'), cfg, args.cutoff, args.output)}")


def cmd_cluster_up(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.cluster import start

    state = start(cfg)
    print(f"Spark standalone master {state['master']}; processes: "
          + ", ".join(f"{p['name']} {p['pid']}" for p in state["processes"]))


def cmd_cluster_down(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.cluster import stop

    stopped = stop(cfg)
    print(f"stopped processes {', '.join(map(str, stopped))}" if stopped else "no local cluster recorded")


def cmd_show_config(cfg: Config, args: argparse.Namespace) -> None:
    import yaml

    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def cmd_locations(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.tracking import tracking_uri

    print(f"data root:         {cfg.paths.root}")
    for name in ("raw_events", "raw_items", "manifest", "events", "rejects", "samples", "als", "ranker_input",
                 "checkpoints", "recommendations"):
        print(f"  {name:<17}{cfg.table_path(name)}")
    print(f"MLflow runs:       {tracking_uri(cfg)}")
    print("  browse them:     .venv/bin/mlflow ui --backend-store-uri <the URI above>")
    print("  champion model:  models:/attention-ranker@champion")


# name → (handler, help, needs --date)
COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], None], str, bool]] = {
    "generate": (cmd_generate, "write the synthetic raw logs, item catalogue, truth/ and manifest.json", False),
    "clean": (spark_stage("clean"),
              "clean day D's raw logs into events and rejects, update the id dictionaries", True),
    "features": (spark_stage("features"),
                 "build features, behaviour sequences and ranker samples as of day D", True),
    "als": (spark_stage("als"),
            "train implicit ALS on the window before D, write top-K candidates, evaluate on D", True),
    "train": (spark_stage("train"),
              "train the attention ranker with DDP on the samples of D, evaluate, register a challenger", True),
    "promote": (spark_stage("promote"),
                "score champion and challenger on D's held-out rows; move champion if the challenger wins", True),
    "rollback": (cmd_rollback, "move champion back to the previous version", False),
    "score": (spark_stage("score"),
              "re-rank D's ALS candidates with the champion; top N per user to lake/recommendations", True),
    "recommend": (cmd_recommend, "print one user's recommendations and the history items behind them", False),
    "nightly": (cmd_nightly, "clean, features, als, train, promote, score for D; skips stages already done", True),
    "backfill": (cmd_backfill, "the nightly for each date of a range, in order; champion moves at most once", False),
    "ingest-movielens": (cmd_ingest_movielens,
                         "convert a MovieLens release (folder or zip) to raw logs and catalogue under the root", False),
    "history": (cmd_history, "whole-history run: clean everything, then features, als and train with one cut-off D",
                False),
    "report": (cmd_report, "the quality report of a whole-history run (ALS, ranker, leave-last-out) as Markdown",
               False),
    "cluster-up": (cmd_cluster_up, "start a Spark standalone master and workers on 127.0.0.1 (pids recorded)", False),
    "cluster-down": (cmd_cluster_down, "stop the processes cluster-up recorded, by process id", False),
    "mlflow-server": (cmd_mlflow_server, "run an MLflow tracking server on 127.0.0.1 with its store under the root",
                      False),
    "pipeline": (cmd_pipeline, "run several stages for a range of days in one Spark session", False),
    "show-config": (cmd_show_config, "print the resolved configuration as YAML", False),
    "locations": (cmd_locations, "print where the tables and the MLflow runs are", False),
}


def build_parser() -> argparse.ArgumentParser:
    from recpipe.submit import JOBS  # the commands a submitted job runs

    parser = argparse.ArgumentParser(prog="recpipe", description="Nightly recommendation pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, needs_date) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if needs_date:
            _with_date(p)
        if name in JOBS:
            p.add_argument("--summary-json", help=argparse.SUPPRESS)  # where a submitted job leaves its summary
        if name == "train":  # sugar for --set ranker.resume=true
            p.add_argument("--resume", dest="overrides", action="append_const", const="ranker.resume=true",
                           help="continue from the last checkpoint of day D")
        if name in ("nightly", "backfill"):
            p.add_argument("--force", action="store_true", help="rerun every stage, even those already done")
            p.add_argument("--from-stage", help="rerun from this stage on (earlier finished stages are skipped)")
        if name == "backfill":
            p.add_argument("--start", type=date_arg, required=True, help="first date")
            p.add_argument("--end", type=date_arg, required=True, help="last date")
            p.add_argument("--promote-last", action="store_true",
                           help="let the last date's challenger move champion (as nightly.promote_backfill=true)")
        if name == "ingest-movielens":
            p.add_argument("--source", required=True, help="a MovieLens zip or folder (ml-latest*, ml-100k, ml-1m, ml-10m, ml-20m, ml-25m)")
        if name in ("history", "report"):
            p.add_argument("--cutoff", type=date_arg, help="evaluation cut-off D (default: history.cutoff)")
        if name == "report":
            p.add_argument("--output", default="docs/results.md", help="where to write the Markdown report")
        if name == "mlflow-server":
            p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
        if name == "recommend":
            p.add_argument("--user", required=True, help="the user id")
            p.add_argument("--date", type=date_arg, help="day of the recommendations (default: the newest)")
        if name == "pipeline":
            p.add_argument("--start", type=date_arg, help="first day (default: the first generated day)")
            p.add_argument("--end", type=date_arg, help="last day (default: the last generated day)")
            p.add_argument("--stages", default="clean,features", help="comma-separated stages, run in pipeline order")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    handler = COMMANDS[args.command][0]
    try:
        cfg = load_config(args.conf, args.overrides)
        handler(cfg, args)
    except RecpipeError as err:
        print(f"recpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else is a bug or an infrastructure failure: keep the trace
        log.exception("stage %s failed", args.command)
        print(f"recpipe {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
