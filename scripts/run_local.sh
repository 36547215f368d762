#!/usr/bin/env bash
# `make run`: the whole pipeline, locally, on the generated default data set.
# Usage: scripts/run_local.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
BIN=${BIN:-.venv/bin}

# D, the day the nightly runs for: DATE if set, else the last generated day. The ranker's
# train window starts features.train_days before it.
read -r FIRST BEFORE_D TRAIN_START AFTER_TRAIN_START D < <("$BIN/python" - "$CONF" "${DATE:-}" "$@" <<'PY'
import datetime as dt
import sys
from recpipe.config import load_config, parse_date
extra = sys.argv[3:]
overrides = [extra[i + 1] for i, arg in enumerate(extra) if arg == "--set"]
cfg = load_config(sys.argv[1], overrides)
dates = cfg.generate.dates
D = parse_date(sys.argv[2]) if sys.argv[2] else dates[-1]
if not dates[0] < D <= dates[-1]:
    sys.exit(f"DATE={D}: must be a generated day after the first ({dates[0]}..{dates[-1]})")
start = D - dt.timedelta(days=cfg.features.train_days)
print(dates[0], D - dt.timedelta(days=1), start, start + dt.timedelta(days=1), D)
PY
)

"$BIN/recpipe" generate --conf "$CONF" "$@"
# The days before D as earlier nightlies would have left what D's nightly reads: events cleaned
# (with the id dictionaries), and the ALS run whose factors give the ranker's train window its
# leak-free als_score. The days are cleaned in two jobs (up to that ALS run's day, then up to
# D - 1) rather than one job per day; see `recpipe clean-range --help`.
"$BIN/recpipe" clean-range --conf "$CONF" "$@" --start "$FIRST" --end "$TRAIN_START"
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$TRAIN_START" --end "$TRAIN_START" --stages als
if [[ "$AFTER_TRAIN_START" < "$D" ]]; then
  "$BIN/recpipe" clean-range --conf "$CONF" "$@" --start "$AFTER_TRAIN_START" --end "$BEFORE_D"
  # ALS_RUNS=every: an ALS run for every train day too, as a steady state of nightlies leaves
  # them, so that each train day's als_score comes from its own day's run (no bootstrap skew).
  if [[ "${ALS_RUNS:-first}" == every ]]; then
    "$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$AFTER_TRAIN_START" --end "$BEFORE_D" --stages als
  fi
fi
# The nightly for D: clean, quality, features, als, train, promote, score.
"$BIN/recpipe" nightly --conf "$CONF" "$@" --date "$D"
echo
echo "Outputs:"
"$BIN/recpipe" locations --conf "$CONF" "$@"
