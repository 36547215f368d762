#!/usr/bin/env bash
# `make run`: the whole pipeline, locally, on the generated default data set.
# Usage: scripts/run_local.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
BIN=${BIN:-.venv/bin}

# D, the day the nightly runs for, is the last generated day; the ranker's train window
# starts features.train_days before it.
read -r FIRST BEFORE_LAST TRAIN_START LAST < <("$BIN/python" - "$CONF" "$@" <<'PY'
import datetime as dt
import sys
from recpipe.config import load_config
extra = sys.argv[2:]
overrides = [extra[i + 1] for i, arg in enumerate(extra) if arg == "--set"]
cfg = load_config(sys.argv[1], overrides)
dates = cfg.generate.dates
print(dates[0], dates[-2], dates[-1] - dt.timedelta(days=cfg.features.train_days), dates[-1])
PY
)

"$BIN/recpipe" generate --conf "$CONF" "$@"
# The days before D, as earlier nightlies would have left them: cleaned with features, and the ALS run
# whose factors give the ranker's train window its leak-free als_score.
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$FIRST" --end "$BEFORE_LAST" --stages clean,features
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$TRAIN_START" --end "$TRAIN_START" --stages als
# The nightly for D: clean, features, als, train, promote, score.
"$BIN/recpipe" nightly --conf "$CONF" "$@" --date "$LAST"
echo
echo "Outputs:"
"$BIN/recpipe" locations --conf "$CONF" "$@"
