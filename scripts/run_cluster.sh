#!/usr/bin/env bash
# `make run-cluster`: `make run` on the standalone cluster of the config (start it with
# `make cluster-up`): every Spark stage is its own spark-submit application (submit.enabled),
# the DDP ranks are barrier tasks on the executors, and MLflow goes through the tracking
# server of mlflow.tracking_uri, started here (and stopped at the end) unless one answers.
# Usage: scripts/run_cluster.sh CONF [--set section.key=value ...]
set -euo pipefail
CONF=$1; shift
BIN=${BIN:-.venv/bin}

read -r MASTER TRACKING PORT < <("$BIN/python" - "$CONF" "$@" <<'PY'
import sys
from urllib.parse import urlsplit
from recpipe.config import load_config
from recpipe.tracking import tracking_uri
extra = sys.argv[2:]
cfg = load_config(sys.argv[1], [extra[i + 1] for i, arg in enumerate(extra) if arg == "--set"])
uri = tracking_uri(cfg)
if not (cfg.submit.enabled and cfg.spark.master.startswith("spark://") and uri.startswith("http://127.0.0.1:")):
    sys.exit(f"{sys.argv[1]}: run-cluster needs submit.enabled, a spark:// master and an "
             f"http://127.0.0.1:PORT tracking URI (got {cfg.submit.enabled}, {cfg.spark.master}, {uri!r})")
print(cfg.spark.master, uri, urlsplit(uri).port)
PY
)

answers() {  # answers URL: the URL (or the master's host:port) takes a connection
  "$BIN/python" - "$1" <<'PY'
import socket, sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
socket.create_connection((url.hostname, url.port), timeout=2).close()
PY
}

answers "$MASTER" 2>/dev/null || { echo "no Spark master answers at $MASTER: run \`make cluster-up\` first" >&2; exit 2; }

SERVER_PID=""
stop_server() { [ -z "$SERVER_PID" ] || kill -TERM -- "-$SERVER_PID" 2>/dev/null || true; }
trap stop_server EXIT
if ! answers "$TRACKING" 2>/dev/null; then
  # its own session, so that the server and its workers stop together by this process id
  setsid "$BIN/recpipe" mlflow-server --conf "$CONF" "$@" --port "$PORT" > /dev/null &
  SERVER_PID=$!
  for _ in $(seq 120); do answers "$TRACKING" 2>/dev/null && break; kill -0 "$SERVER_PID" || exit 1; sleep 1; done
  answers "$TRACKING" || { echo "the tracking server did not come up at $TRACKING" >&2; exit 1; }
  echo "tracking server $TRACKING (process $SERVER_PID, stopped at the end)"
fi

BIN=$BIN bash "$(dirname "$0")/run_local.sh" "$CONF" "$@"
