#!/usr/bin/env bash
# `make report`: the whole-history run on MovieLens and its quality report.
# Usage: scripts/report.sh CONF SOURCE OUTPUT [--set section.key=value ...]
# Ingests SOURCE into the profile's data root if that root has no raw events yet, runs
# `recpipe history` (clean everything, then features, ALS and the ranker as of the
# cut-off), then writes OUTPUT from what the run logged.
set -euo pipefail
CONF=$1 SOURCE=$2 OUTPUT=$3; shift 3
BIN=${BIN:-.venv/bin}

RAW=$("$BIN/python" - "$CONF" "$@" <<'PY'
import sys
from recpipe.config import load_config
extra = sys.argv[2:]
cfg = load_config(sys.argv[1], [extra[i + 1] for i, arg in enumerate(extra) if arg == "--set"])
print(cfg.table_path("raw_events"))
PY
)
if [[ ! -d "$RAW" ]]; then
  if [[ -z "$SOURCE" || ! -e "$SOURCE" ]]; then
    echo "report.sh: no MovieLens data set at '${SOURCE}'; get it with: $BIN/recpipe datasets fetch ml-latest-small" \
      "(or pass MOVIELENS=a MovieLens zip or folder)" >&2
    exit 2
  fi
  "$BIN/recpipe" ingest-movielens --conf "$CONF" "$@" --source "$SOURCE"
fi
"$BIN/recpipe" history --conf "$CONF" "$@"
"$BIN/recpipe" report --conf "$CONF" "$@" --output "$OUTPUT"
