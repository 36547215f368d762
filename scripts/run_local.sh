#!/usr/bin/env bash
# `make run`: the whole pipeline, locally, on the generated default data set.
# Usage: scripts/run_local.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
RECPIPE=${RECPIPE:-.venv/bin/recpipe}

"$RECPIPE" generate --conf "$CONF" "$@"
echo
echo "Outputs:"
"$RECPIPE" locations --conf "$CONF" "$@"
