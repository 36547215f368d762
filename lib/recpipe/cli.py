"""The `recpipe` command line: one sub-command per stage, all sharing --conf and --set.

Every sub-command loads the layered config, sets up logging and calls one library
function; `jobs/*.py` call the same functions under spark-submit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
from typing import Callable, Sequence

from recpipe import __version__
from recpipe.config import BASE_FILE_NAME, PACKAGED_CONF, Config, load_config, parse_date
from recpipe.errors import RecpipeError
from recpipe.logs import setup_logging
from recpipe.names import CHAMPION, RANKER_MODEL
from recpipe.stage import Stage

log = logging.getLogger("recpipe.cli")

# Without --conf: $RECPIPE_CONF, else the installed defaults (base.yaml alone: local Spark,
# data under ~/.local/share/recpipe), the same from any working directory.
CONF_VARIABLE = "RECPIPE_CONF"
DEFAULT_CONF = str(PACKAGED_CONF / BASE_FILE_NAME)


def date_arg(text: str) -> dt.date:
    """argparse type for --date: a real calendar date written YYYY-MM-DD."""
    try:
        return parse_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default=os.environ.get(CONF_VARIABLE) or DEFAULT_CONF,
                        help=f"profile YAML, layered over the base.yaml beside it, else the installed one (default "
                        f"${CONF_VARIABLE}, else the installed base.yaml)")
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


def stage_command(stage: Stage) -> Callable[[Config, argparse.Namespace], None]:
    """The handler of a stage's own command: the stage for --date through the runner."""

    def handler(cfg: Config, args: argparse.Namespace) -> None:
        run_one_stage(cfg, stage, args)

    return handler


def cmd_run_stage(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe import stages

    run_one_stage(cfg, stages.get(args.stage), args)


def run_one_stage(cfg: Config, stage: Stage, args: argparse.Namespace) -> None:
    from recpipe.lock import describe_command
    from recpipe.runner import format_outcomes, running

    with running(cfg, describe_command()) as runner:
        outcome = runner.run(stage, args.date, force=args.force)
    print(format_outcomes([outcome]))
    write_summary(args, outcome.summary)


def write_summary(args: argparse.Namespace, summary: object) -> None:
    """--summary-json: how a submitted job hands its summary back to the submitting process."""
    if getattr(args, "summary_json", None):
        with open(args.summary_json, "w") as out:
            json.dump(summary, out, default=str)


def cmd_pipeline(cfg: Config, args: argparse.Namespace) -> None:
    import dataclasses

    from recpipe import stages
    from recpipe.pipeline import date_range, run_stages
    from recpipe.runner import StageOutcome, format_outcomes
    from recpipe.submit import submit, submitting

    generated = cfg.generate.dates
    dates = date_range(args.start or generated[0], args.end or generated[-1])
    chosen = stages.parse(args.stages)
    if submitting(cfg):  # the whole range as one application, under this process's lock
        from recpipe.lock import describe_command, root_lock

        with root_lock(cfg, describe_command()):
            returned = submit(cfg, "pipeline", ["--start", dates[0].isoformat(), "--end", dates[-1].isoformat(),
                                                "--stages", ",".join(s.name for s in chosen)]
                              + (["--force"] if args.force else []))
        outcomes = [StageOutcome(**{**r, "date": dt.date.fromisoformat(r["date"])}) for r in returned]
    else:
        outcomes = run_stages(cfg, dates, chosen, force=args.force)
    print(format_outcomes(outcomes))
    write_summary(args, [dataclasses.asdict(o) for o in outcomes])


def cmd_rollback(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.lock import describe_command, root_lock
    from recpipe.registry.promote import rollback

    with root_lock(cfg, describe_command()):  # the aliases move only between runs, never under one
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


def cmd_datasets(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe import datasets

    if args.action == "path":
        print(datasets.path(args.name))
        return
    print(datasets.fetch(args.name, url=args.url, sha256=args.sha256))
    print(datasets.release(args.name).licence)


def cmd_clean_range(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.history import clean_in_one_job
    from recpipe.runner import format_outcomes

    print(format_outcomes([clean_in_one_job(cfg, args.start, args.end, force=args.force)]))


def cmd_history(cfg: Config, args: argparse.Namespace) -> None:
    from recpipe.history import run
    from recpipe.runner import format_outcomes

    print(format_outcomes(run(cfg, args.cutoff)))


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
    print(f"  champion model:  models:/{RANKER_MODEL}@{CHAMPION}")


@dataclasses.dataclass(frozen=True)
class Command:
    """One sub-command: its handler, its help, and its own options (besides --conf/--set)."""

    name: str
    handler: Callable[[Config, argparse.Namespace], None]
    help: str
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _forced(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rerun, even if done with the same inputs")


def _dated_stage(stage: Stage) -> Callable[[argparse.ArgumentParser], None]:
    def options(parser: argparse.ArgumentParser) -> None:
        _with_date(parser)
        _forced(parser)
        _summary_json(parser)
        for option in stage.options:
            option.add_to(parser)
    return options


def _summary_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary-json", help=argparse.SUPPRESS)  # where a submitted job leaves its summary


def _run_stage_options(parser: argparse.ArgumentParser) -> None:
    from recpipe import stages

    parser.add_argument("--stage", required=True, choices=stages.names(), help="the stage to run")
    _with_date(parser)
    _forced(parser)
    _summary_json(parser)
    for option in {o.flags: o for stage in stages.STAGES for o in stage.options}.values():
        option.add_to(parser)


def _nightly_options(parser: argparse.ArgumentParser) -> None:
    _with_date(parser)
    _rerun_options(parser)


def _rerun_options(parser: argparse.ArgumentParser) -> None:
    from recpipe.etl.gate import ACCEPT_OPTION

    parser.add_argument("--force", action="store_true", help="rerun every stage, even those already done")
    parser.add_argument("--from-stage", help="rerun from this stage on (earlier finished stages are skipped)")
    ACCEPT_OPTION.add_to(parser)


def _backfill_options(parser: argparse.ArgumentParser) -> None:
    _rerun_options(parser)
    parser.add_argument("--start", type=date_arg, required=True, help="first date")
    parser.add_argument("--end", type=date_arg, required=True, help="last date")
    parser.add_argument("--promote-last", action="store_true",
                        help="let the last date's challenger move champion (as nightly.promote_backfill=true)")


def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=date_arg, help="first day (default: the first generated day)")
    parser.add_argument("--end", type=date_arg, help="last day (default: the last generated day)")
    parser.add_argument("--stages", default="clean,features", help="comma-separated stages, run in pipeline order")
    _forced(parser)
    _summary_json(parser)


def _clean_range_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=date_arg, required=True, help="first day")
    parser.add_argument("--end", type=date_arg, required=True, help="last day")
    _forced(parser)


def _cutoff(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cutoff", type=date_arg, help="evaluation cut-off D (default: history.cutoff)")


def _report_options(parser: argparse.ArgumentParser) -> None:
    _cutoff(parser)
    parser.add_argument("--output", default="docs/results.md", help="where to write the Markdown report")


def _recommend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True, help="the user id")
    parser.add_argument("--date", type=date_arg, help="day of the recommendations (default: the newest)")


def _datasets_options(parser: argparse.ArgumentParser) -> None:
    from recpipe.datasets import RELEASES

    parser.add_argument("action", choices=("fetch", "path"),
                        help="fetch: download and verify into the cache (if not there), print path and licence; "
                        "path: print where it is, or where fetch would put it")
    parser.add_argument("name", metavar="NAME", choices=list(RELEASES),
                        help=f"the MovieLens release: {', '.join(RELEASES)}")
    parser.add_argument("--sha256", help="fetch: the digest to check, for a release without a pinned one")
    parser.add_argument("--url", help="fetch: download from this URL (a mirror) instead; the digest still applies")


def commands() -> list[Command]:
    """Every sub-command, the declared stages' among them, in the order `--help` lists them."""
    from recpipe import stages

    def opt(*flags, **kwargs):
        return lambda parser: parser.add_argument(*flags, **kwargs)

    return [
        Command("generate", cmd_generate, "write the synthetic raw logs, item catalogue, truth/ and manifest.json"),
        *[Command(stage.name, stage_command(stage), stage.help, _dated_stage(stage)) for stage in stages.STAGES],
        Command("run-stage", cmd_run_stage, "run one declared stage for D through the runner (Airflow's and "
                "spark-submit's entry)", _run_stage_options),
        Command("rollback", cmd_rollback, "move champion back to the previous version"),
        Command("recommend", cmd_recommend, "print one user's recommendations and the history items behind them",
                _recommend_options),
        Command("nightly", cmd_nightly, "every nightly stage for D; skips stages already done", _nightly_options),
        Command("backfill", cmd_backfill, "the nightly for each date of a range, in order; champion moves at most once",
                _backfill_options),
        Command("ingest-movielens", cmd_ingest_movielens,
                "convert a MovieLens release (folder or zip) to raw logs and catalogue under the root",
                opt("--source", required=True,
                    help="a MovieLens zip or folder (ml-latest*, ml-100k, ml-1m, ml-10m, ml-20m, ml-25m)")),
        Command("datasets", cmd_datasets, "fetch a MovieLens release into the cache, checked against its pinned "
                "sha256, or print its path ($RECPIPE_DATA_DIR, else ~/.cache/recpipe/datasets)", _datasets_options),
        Command("clean-range", cmd_clean_range, "clean the raw days START..END in one Spark job (the days before a "
                "first nightly); skipped when they are cleaned", _clean_range_options),
        Command("history", cmd_history, "whole-history run: clean everything, then features, als and train with one "
                "cut-off D", _cutoff),
        Command("report", cmd_report, "the quality report of a whole-history run (ALS, ranker, leave-last-out) as "
                "Markdown", _report_options),
        Command("cluster-up", cmd_cluster_up, "start a Spark standalone master and workers on 127.0.0.1 (pids recorded)"),
        Command("cluster-down", cmd_cluster_down, "stop the processes cluster-up recorded, by process id"),
        Command("mlflow-server", cmd_mlflow_server, "run an MLflow tracking server on 127.0.0.1 with its store under "
                "the root", opt("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")),
        Command("pipeline", cmd_pipeline, "run several stages for a range of days in one Spark session",
                _pipeline_options),
        Command("show-config", cmd_show_config, "print the resolved configuration as YAML"),
        Command("locations", cmd_locations, "print where the tables and the MLflow runs are"),
    ]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="recpipe", description="Nightly recommendation pipeline.")
    parser.add_argument("--version", action="version", version=f"recpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    known = {}
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        _common(p)
        command.options(p)
        known[command.name] = command
    return parser, known


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser, known = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    handler = known[args.command].handler
    try:
        cfg = load_config(args.conf, args.overrides)
        handler(cfg, args)
    except RecpipeError as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, RecpipeError):  # a stage crashed: keep its trace
            log.error("%s", err, exc_info=cause)
            print(f"recpipe {args.command}: failed: {err}", file=sys.stderr)
            return 1
        print(f"recpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else is a bug or an infrastructure failure: keep the trace
        log.exception("stage %s failed", args.command)
        print(f"recpipe {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
