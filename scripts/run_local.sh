#!/usr/bin/env bash
# `make run`: the whole pipeline, locally, on the generated default data set.
# Usage: scripts/run_local.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
BIN=${BIN:-.venv/bin}

# The last generated day is the day D the nightly stages run for.
LAST=$("$BIN/python" - "$CONF" "$@" <<'PY'
import sys
from recpipe.config import load_config
extra = sys.argv[2:]
overrides = [extra[i + 1] for i, arg in enumerate(extra) if arg == "--set"]
print(load_config(sys.argv[1], overrides).generate.dates[-1])
PY
)

"$BIN/recpipe" generate --conf "$CONF" "$@"
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --stages clean,features
"$BIN/recpipe" pipeline --conf "$CONF" "$@" --start "$LAST" --end "$LAST" --stages als
echo
echo "Outputs:"
"$BIN/recpipe" locations --conf "$CONF" "$@"
