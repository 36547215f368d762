#!/usr/bin/env bash
# `make run`: the whole pipeline, locally, on the generated default data set.
# Usage: scripts/run_local.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
BIN=${BIN:-.venv/bin}

# D, the day the nightly runs for: DATE if set, else the last generated day. The ranker's
# train window starts features.train_days before it.
read -r FIRST BEFORE_D TRAIN_START D < <("$BIN/python" - "$CONF" "${DATE:-}" "$@" <<'PY'
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
print(dates[0], D - dt.timedelta(days=1), D - dt.timedelta(days=cfg.features.train_days), D)
PY
)

"$BIN/recpipe" generate --conf "$CONF" "$@"
# The days before D as earlier nightlies would have left what D's nightly reads: events cleaned
# (with the id dictionaries), and the ALS run whose factors give the ranker's train window its
# leak-free als_score.
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$FIRST" --end "$BEFORE_D" --stages clean
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$TRAIN_START" --end "$TRAIN_START" --stages als
# The nightly for D: clean, quality, features, als, train, promote, score.
"$BIN/recpipe" nightly --conf "$CONF" "$@" --date "$D"
echo
echo "Outputs:"
"$BIN/recpipe" locations --conf "$CONF" "$@"
