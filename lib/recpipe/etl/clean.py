"""`recpipe clean`: day D's raw behaviour log into accepted events, rejects and id dictionaries.

    raw lines ─ parse ─ check_rows (reasons 1-6) ─ classify_lines (7-8) ─┬─ events (indexed)
                                                                         └─ rejects
    raw catalogue ─ clean_catalogue ─┬─ dictionaries (users, items, categories)
                                     └─ catalogue (indexed)

Every line read ends as one accepted event or one reject; the job checks that before it
writes anything. Every table it writes (events, rejects, the dictionaries, the catalogue,
the quality report) is a new version, and all of them are committed together when the
run ends (`recpipe.tables`): readers see D all old or all new, never a mix.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe import io, paths, tables
from recpipe.config import CleanConfig, Config
from recpipe.errors import ConfigError, DataError
from recpipe.etl.catalogue import clean_catalogue, index_catalogue
from recpipe.etl.dictionaries import (
    BRANDS,
    CATEGORIES,
    ITEMS,
    USERS,
    DictionarySpec,
    check_extends_previous,
    number_new_ids,
    read_newest_snapshots,
    read_snapshot,
    require_dense,
    require_index,
    snapshot_as_of,
    stacked,
    stacked_ids,
    stacked_stats,
    unseen_ids,
    unstacked,
)
from recpipe.etl.quality import (
    Outcomes,
    build_report,
    count_outcomes,
    distinct_ids,
    log_report,
    reconcile,
    write_report,
)
from recpipe.etl.raw import parse_lines, read_catalogue, read_raw_lines
from recpipe.etl.raw_files import check_files, list_files
from recpipe.etl.rejects import LATEST_TEN_DIGIT_MILLIS, accepted_lines, check_rows, classify_lines, rejected_lines
from recpipe.schema import (
    BRAND,
    CATEGORY,
    DT,
    EVENT_ID,
    EVENT_TYPE,
    EVENTS_SCHEMA,
    ITEM_ID,
    ITEM_IDX,
    LINE,
    RAW_EVENT_SCHEMA,
    TS,
    USER_ID,
    USER_IDX,
)
from recpipe.spark import persist
from recpipe.stage import Partition, Stage

log = logging.getLogger("recpipe.clean")

# The events table holds these non-null, so a line without one can never be accepted.
ALWAYS_REQUIRED = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TS)


@tables.one_commit
def run(spark: SparkSession, cfg: Config, date: dt.date) -> dict:
    """Clean day `date`: write events, rejects, dictionaries, catalogue and the quality report.

    Args:
        spark: the session (its settings from `recpipe.spark.get_spark`).
        cfg: the resolved configuration; `cfg.clean` holds the rules.
        date: the day D whose raw file is cleaned.

    Returns:
        The quality report (also written to `quality/dt=D/quality.json` and to MLflow).

    Raises:
        DataError: D's raw file or the catalogue is missing, the lines do not reconcile,
            or D's events use ids that only a newer dictionary snapshot could number.
        ConfigError: `clean.required_fields` leaves out a field events cannot lack.
    """
    check_settings(cfg.clean)
    lines, quarantined = read_day_lines(spark, cfg, date)
    return clean_lines(spark, cfg, lines, quarantined, first=date, last=date, by_file_day=False)


@tables.one_commit
def run_range(spark: SparkSession, cfg: Config, first: dt.date, last: dt.date) -> dict:
    """Clean the raw files of the days first..last in one job: the whole-history run's clean.

    Years of history are thousands of day folders; one job per day would spend its time
    starting jobs. The rules are those of `run`, with each line's own file day standing
    in for D: a `ts` may lie up to the tolerance after the end of its file's day, a bot
    verdict covers its user on that file day, and a re-sent event is a duplicate across
    the whole range (and of the look-back days before `first`). Events and rejects land in
    the `dt=` of their file. The dictionaries and the catalogue get one snapshot, dated
    `last` (every id in it is first seen by `last`), and so does the quality report,
    which covers the range.

    Returns:
        The quality report of the range (`quality/dt=<last>/quality.json`, and MLflow).
    """
    if last < first:
        raise ConfigError(f"clean: the range {first}..{last} is empty")
    check_settings(cfg.clean)
    lines, quarantined = read_range_lines(spark, cfg, first, last)
    return clean_lines(spark, cfg, lines, quarantined, first=first, last=last, by_file_day=True)


def clean_lines(spark: SparkSession, cfg: Config, lines: DataFrame, quarantined: list[dict], *, first: dt.date,
                last: dt.date, by_file_day: bool) -> dict:
    """Classify, reconcile and write `lines` (one day's, or with `by_file_day` several days'
    carrying their `dt`); write and log the quality report dated `last`, which lists the
    `quarantined` files."""
    checked, classified = classify(spark, cfg, lines, first=first, by_file_day=by_file_day)
    catalogue = persist(clean_catalogue(read_raw_catalogue(spark, cfg)), cfg)
    try:
        lines_read = checked.count()  # a projection of the raw text: one row per line read
        outcomes = count_outcomes(classified, day=None if by_file_day else last, event_types=cfg.clean.event_types)
        reconcile(lines_read, outcomes)  # before anything is written
        checked.unpersist()
        report = write_outputs(spark, cfg, last, classified, catalogue, lines_read=lines_read, outcomes=outcomes,
                               by_file_day=by_file_day, first=first)
    finally:
        for frame in (checked, classified, catalogue):
            frame.unpersist()
    if by_file_day:
        report["first_date"] = first.isoformat()
    report["quarantined_files"] = quarantined
    for bad in quarantined:
        log.warning("clean: quarantined %s (%d bytes, %s): %s", bad["file"], bad["bytes"], bad["reason"], bad["error"])
    location = write_report(cfg, last, report)
    run_id = log_report(cfg, last, report)
    span = f"{first}..{last}" if by_file_day else f"{last}"
    log.info("clean %s: read %d lines, accepted %d, rejected %d %s; report %s, MLflow run %s", span,
             report["lines_read"], report["accepted"], report["rejected"], report["rejected_by_reason"], location,
             run_id)
    return report


def raw_days(cfg: Config) -> list[dt.date]:
    """The days that have a raw events folder, sorted."""
    return io.partition_days(cfg, "raw_events")


def read_range_lines(spark: SparkSession, cfg: Config, first: dt.date, last: dt.date) -> tuple[DataFrame, list[dict]]:
    """The raw lines of the days first..last (columns `line`, `dt`) from their readable files,
    and the quarantined files; DataError if no day has a raw folder."""
    days = [day for day in raw_days(cfg) if first <= day <= last]
    if not days:
        raise DataError(f"no raw events from {first} to {last} under {cfg.table_path('raw_events')}")
    files, quarantined = check_files(spark, [f for day in days for f in list_files(cfg.table_path("raw_events", day))])
    if not files:
        return spark.createDataFrame([], f"{LINE} string, {DT} date"), quarantined
    lines = (
        spark.read.option("basePath", cfg.table_path("raw_events")).text([f.location for f in files])
        .withColumnRenamed("value", LINE)
        .select(LINE, F.col(DT).cast("date").alias(DT))  # `dt` from the folder names
    )
    return spread(lines, cfg), quarantined


def spread(lines: DataFrame, cfg: Config) -> DataFrame:
    """`lines` spread over `clean.parse_partitions` tasks where they come in fewer.

    A `.gz` file cannot be split, so a day's single file is read by one task, and parsing
    and checking every line would run on one core with the others idle. Spreading the
    lines right after the read costs one shuffle of the raw text and lets every core
    parse; lines read by enough tasks already (a range of many files) are left as read.
    """
    wanted = cfg.clean.parse_partitions or lines.sparkSession.sparkContext.defaultParallelism
    if lines.rdd.getNumPartitions() >= wanted:
        return lines
    return lines.repartition(wanted, LINE)  # by hash: no sort of the text, as a round robin would need


def classify(spark: SparkSession, cfg: Config, lines: DataFrame, *, first: dt.date,
             by_file_day: bool) -> tuple[DataFrame, DataFrame]:
    """The lines after the per-line checks, and classified; both persisted.

    The classified frame feeds every count and output, so it is computed once. A single
    day's lines are judged against D = `first`; with `by_file_day`, each against its `dt`.
    """
    settings = cfg.clean
    checked = persist(check_rows(
        parse_lines(lines),
        required_fields=settings.required_fields,
        event_types=settings.event_types,
        day=None if by_file_day else first,
        future_tolerance_minutes=settings.future_tolerance_minutes,
        earliest=settings.earliest_date,
    ), cfg)
    classified = persist(classify_lines(
        checked,
        previous_event_ids(spark, cfg, first, settings.dedup_lookback_days),
        bot_window_minutes=settings.bot_window_minutes,
        bot_max_events_per_window=settings.bot_max_events_per_window,
        bot_per=(USER_ID, DT) if by_file_day else (USER_ID,),
    ), cfg)
    return checked, classified


def write_outputs(spark: SparkSession, cfg: Config, date: dt.date, classified: DataFrame, catalogue: DataFrame, *,
                  lines_read: int, outcomes: Outcomes, by_file_day: bool = False, first: dt.date | None = None) -> dict:
    """Write D's dictionaries, events, rejects and catalogue; return the quality report.

    With `by_file_day`, `classified` holds the files of the days first..D (column `dt`):
    events and rejects go to their file's day, and every day of the range is replaced,
    a day without rows too.
    """
    first = first or date
    settings = cfg.clean
    day_column = (DT,) if by_file_day else ()
    accepted = accepted_lines(classified)
    dictionaries, first_seen = update_dictionaries(
        spark, cfg, date,
        used={USERS: accepted.select(USER_ID), ITEMS: accepted.select(ITEM_ID)},
        listed={ITEMS: catalogue.select(ITEM_ID), CATEGORIES: catalogue.select(CATEGORY),
                BRANDS: catalogue.select(BRAND)},
    )
    covered = [first + dt.timedelta(days=n) for n in range((date - first).days + 1)]
    if by_file_day:
        io.replace_days(rejected_lines(classified, carry=day_column), cfg, "rejects", covered,
                        files=settings.rejects_files_per_day)
    else:
        write_day(rejected_lines(classified), cfg, "rejects", date, rows=outcomes.rejected,
                  files=settings.rejects_files_per_day)
    indexed_catalogue = index_catalogue(catalogue, dictionaries[ITEMS], dictionaries[CATEGORIES], dictionaries[BRANDS])
    indexed_catalogue = persist(indexed_catalogue, cfg)  # counted, then written
    try:
        catalogue_items = indexed_catalogue.count()
        write_day(indexed_catalogue, cfg, "catalogue", date, rows=catalogue_items,
                  files=settings.snapshot_files_per_day)
    finally:
        indexed_catalogue.unpersist()
    report = build_report(
        day=date,
        lines_read=lines_read,
        outcomes=outcomes,
        distinct=distinct_ids(accepted),
        new_ids={kind: first_seen[spec] for kind, spec in
                 (("users", USERS), ("items", ITEMS), ("categories", CATEGORIES), ("brands", BRANDS))},
        catalogue_items=catalogue_items,
    )
    # Last: a write to the events table makes Spark drop every cached plan that reads it,
    # and `classified` reads the look-back days; anything after this would recompute it.
    events = index_events(accepted, dictionaries[USERS], dictionaries[ITEMS], carry=day_column)
    if by_file_day:
        io.replace_days(events, cfg, "events", covered, files=settings.events_files_per_day)
    else:
        write_day(events, cfg, "events", date, rows=outcomes.accepted, files=settings.events_files_per_day)
    return report


def check_settings(settings: CleanConfig) -> None:
    """Raise ConfigError for rules that would let a record through without what events need."""
    raw_fields = {f.name for f in RAW_EVENT_SCHEMA.fields}
    unknown = [name for name in settings.required_fields if name not in raw_fields]
    if unknown:
        raise ConfigError(f"clean.required_fields: {', '.join(unknown)} not a raw event field "
                          f"(known: {', '.join(sorted(raw_fields))})")
    lacking = [name for name in ALWAYS_REQUIRED if name not in settings.required_fields]
    if lacking:
        raise ConfigError(f"clean.required_fields must include {', '.join(lacking)}: events cannot lack them")
    if settings.earliest_date <= LATEST_TEN_DIGIT_MILLIS.date():
        raise ConfigError(f"clean.earliest_date must be after {LATEST_TEN_DIGIT_MILLIS.date()}, got "
                          f"{settings.earliest_date}: epoch seconds read as milliseconds would pass as early 1970")
    for key in ("bot_window_minutes", "events_files_per_day", "rejects_files_per_day", "snapshot_files_per_day"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"clean.{key} must be at least 1, got {getattr(settings, key)}")
    if settings.parse_partitions < 0:
        raise ConfigError(f"clean.parse_partitions must be 0 (the session's cores) or more, got {settings.parse_partitions}")


def read_day_lines(spark: SparkSession, cfg: Config, date: dt.date) -> tuple[DataFrame, list[dict]]:
    """Day D's raw lines (column `line`) from its readable files, and the quarantined files;
    DataError naming the folder if it is missing."""
    location = cfg.table_path("raw_events", date)
    if not paths.exists(location):
        raise DataError(f"no raw events for {date}: {location} does not exist")
    files, quarantined = check_files(spark, list_files(location))
    if not files:
        return spark.createDataFrame([], f"{LINE} string"), quarantined
    return spread(read_raw_lines(spark, *[f.location for f in files]), cfg), quarantined


def read_raw_catalogue(spark: SparkSession, cfg: Config) -> DataFrame:
    location = cfg.table_path("raw_items")
    if not paths.exists(location):
        raise DataError(f"no item catalogue: {location} does not exist")
    return read_catalogue(spark, location)


def dedup_days(date: dt.date, lookback_days: int) -> list[dt.date]:
    """The days before D whose accepted event ids make a re-sent event a duplicate."""
    return [date - dt.timedelta(days=n) for n in range(1, lookback_days + 1)]


def previous_event_ids(spark: SparkSession, cfg: Config, date: dt.date, lookback_days: int) -> DataFrame:
    """Event ids accepted on the `lookback_days` days before D (column `event_id`)."""
    schema = T.StructType([T.StructField(EVENT_ID, T.StringType())])
    days = dedup_days(date, lookback_days)
    # Only those days' folders, with the one column: no discovery of the whole table's
    # partitions, no job to infer a schema that is known.
    folders = [found for day in days if (found := io.location(cfg, "events", day))]
    if not folders:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*folders)


def update_dictionaries(spark: SparkSession, cfg: Config, date: dt.date, *, used: dict[DictionarySpec, DataFrame],
                        listed: dict[DictionarySpec, DataFrame]
                        ) -> tuple[dict[DictionarySpec, DataFrame], dict[DictionarySpec, int]]:
    """Extend each dictionary's newest snapshot by the ids it lacks and write it as D's.

    The newest snapshot, whatever its day, decides the next free index. When it is newer
    than D (a rerun or a backfill), nothing is numbered: D's ids must all be known, and
    D's snapshot holds the ids first seen by D plus the known ones D uses or lists
    (`snapshot_as_of`), so a rerun writes what the first run wrote.

    Args:
        used: per dictionary, ids that D's accepted events use.
        listed: per dictionary, ids that the catalogue lists. In a backfill, listed ids
            the dictionary lacks are left out: they are newer than every cleaned day.

    Returns:
        Per dictionary, D's snapshot as written, read back: the frames built from the
        old snapshot must not be used once it may have been replaced (a rerun of D
        overwrites the very snapshot it read); and per dictionary, how many ids were
        first seen on D.

    Raises:
        DataError: before any write, when D is older than the newest snapshot and its
            events use ids it lacks: numbering them now would fork the dictionary, since
            the newer snapshots would not hold them. Clean the later days again in order.
    """
    newest = read_newest_snapshots(spark, cfg, DICTIONARIES)
    numbered = [spec for spec in DICTIONARIES if newest[spec][1] is None or newest[spec][1] <= date]
    rebuilt = [spec for spec in DICTIONARIES if spec not in numbered]
    snapshots = []
    if numbered:
        existing = stacked({spec: newest[spec][0] for spec in numbered})
        ids = {spec: found for spec in numbered if (found := key_union(spec.key, used.get(spec), listed.get(spec)))}
        snapshots.append(number_new_ids(existing, stacked_ids(ids), day=date) if ids else existing)
    for spec in rebuilt:
        existing, newest_day = newest[spec]
        needed = key_union(spec.key, used.get(spec))
        missing = unseen_ids(existing, needed, key=spec.key).count() if needed is not None else 0
        if missing:
            raise DataError(f"{spec.table}: {missing} new id(s) on {date}, but the newest snapshot is dt={newest_day}; "
                            f"clean the days after {date} again in order instead")
        # Whatever the snapshot before D holds stays in D's: each snapshot extends the one before.
        before = io.latest_day(cfg, spec.table, date - dt.timedelta(days=1))
        everything = key_union(spec.key, used.get(spec), listed.get(spec))
        kept = key_union(spec.key, everything, read_snapshot(spark, cfg, spec, before) if before else None)
        snapshots.append(stacked({spec: snapshot_as_of(existing, kept, key=spec.key, day=date)}))
    written, first_seen = write_snapshots(spark, cfg, functools.reduce(DataFrame.unionByName, snapshots), date)
    if rebuilt:  # an extension of the checked newest snapshot carries its rows as they were
        check_extends_previous(spark, cfg, {spec: (written[spec], date) for spec in rebuilt})
    return written, first_seen


def write_snapshots(spark: SparkSession, cfg: Config, snapshots: DataFrame,
                    date: dt.date) -> tuple[dict[DictionarySpec, DataFrame], dict[DictionarySpec, int]]:
    """Check D's new snapshot of each dictionary (dense and unique; `snapshots` holds them
    `stacked`) and write them; return each as written, read back, and how many of its
    ids are first seen on D. Nothing is written for a dictionary that has no id yet (a
    first day without events)."""
    # Numbered once: the checks, the counts and the writes all read the same computed rows.
    snapshots = persist(snapshots, cfg)
    try:
        stats = stacked_stats(snapshots, date)
        holding = [spec for spec in DICTIONARIES if stats[spec.table]["rows"]]
        for spec in holding:  # all checked before any is written: a failure is a bug
            require_dense(unstacked(snapshots, spec), spec, date, stats[spec.table])
        for spec in holding:
            io.write_days(io.with_day(unstacked(snapshots, spec), date), cfg, spec.table,
                          files=cfg.clean.snapshot_files_per_day)
    finally:
        snapshots.unpersist()
    written = {spec: read_snapshot(spark, cfg, spec, date, check=False) if spec in holding
               else spark.createDataFrame([], spec.schema) for spec in DICTIONARIES}
    return written, {spec: stats[spec.table]["new"] for spec in DICTIONARIES}


def key_union(key: str, *frames: DataFrame | None) -> DataFrame | None:
    """The `key` column of the given frames stacked, or None if none is given."""
    present = [frame.select(key) for frame in frames if frame is not None]
    if not present:
        return None
    union = present[0]
    for frame in present[1:]:
        union = union.unionByName(frame)
    return union


def index_events(accepted: DataFrame, users: DataFrame, items: DataFrame, carry: Sequence[str] = ()) -> DataFrame:
    """Accepted events with `user_idx` and `item_idx`, exactly the columns of EVENTS_SCHEMA
    (and the `carry` columns, such as the `dt` of a multi-day clean)."""
    return (
        accepted
        .join(users.select(USER_ID, USER_IDX), USER_ID, "left")
        .join(items.select(ITEM_ID, ITEM_IDX), ITEM_ID, "left")
        .withColumn(USER_IDX, require_index(USER_IDX, USER_ID))
        .withColumn(ITEM_IDX, require_index(ITEM_IDX, ITEM_ID))
        .select(*[F.col(field.name).cast(field.dataType) for field in EVENTS_SCHEMA.fields], *carry)
    )


def write_day(frame: DataFrame, cfg: Config, name: str, date: dt.date, *, rows: int, files: int) -> None:
    """Replace day D of a table by `frame`, which holds `rows` rows (empty: D removed)."""
    io.write_day(frame, cfg, name, date, files, rows=rows)


DICTIONARIES = (USERS, ITEMS, CATEGORIES, BRANDS)


def reads(cfg: Config, date: dt.date) -> list[Partition]:
    """D's raw file and the catalogue; the accepted events of the dedup look-back days; the
    dictionaries' snapshot before D, which D's extends."""
    before = date - dt.timedelta(days=1)
    snapshots = [Partition(spec.table, day) for spec in DICTIONARIES if (day := io.latest_day(cfg, spec.table, before))]
    return [
        Partition("raw_events", date, required=True),
        Partition("raw_items", required=True),
        *[Partition("events", day) for day in dedup_days(date, cfg.clean.dedup_lookback_days)],
        *snapshots,
    ]


def writes(cfg: Config, date: dt.date) -> list[Partition]:
    return [Partition(table, date) for table in
            ("events", "rejects", "quality", *(spec.table for spec in DICTIONARIES), "catalogue")]


STAGE = Stage(
    name="clean",
    help="clean day D's raw logs into events and rejects, update the id dictionaries",
    config=("clean",),
    reads=reads,
    writes=writes,
    run=run,
    rows=lambda summary: (summary.get("lines_read"), summary.get("accepted")),
)
