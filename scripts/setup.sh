#!/usr/bin/env bash
# Creates .venv with the pinned stack and checks for Java 17. Called by `make setup`;
# the Makefile skips it when the stamp for the current constraints file exists.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
STAMP=$1

ensure_java17() {
    if java -version 2>&1 | grep -q 'version "17'; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: Java 17 not found; installing openjdk-17-jre-headless with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
        return
    fi
    echo "setup: Spark 3.5 needs Java 17 and none was found. Install it with:" >&2
    echo "    sudo apt-get install -y openjdk-17-jre-headless" >&2
    exit 1
}

# Spark ML's netlib loads libblas.so.3 when present and otherwise falls back to pure Java
# BLAS, several times slower for ALS; OpenBLAS provides it.
ensure_native_blas() {
    if ldconfig -p | grep -q 'libblas\.so\.3'; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: libblas.so.3 not found; installing OpenBLAS (libopenblas0) with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0
        return
    fi
    echo "setup: warning: no native BLAS; Spark ALS will use its Java fallback. Install it with:" >&2
    echo "    sudo apt-get install -y libopenblas0" >&2
}

ensure_java17
ensure_native_blas
if ! command -v "$PYTHON" >/dev/null; then
    echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11 (torch 2.13 wheels are built for it)" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# recpipe editable with what tests and benchmarks need; the pins come from constraints.txt.
"$VENV/bin/pip" install --quiet -c constraints.txt -e ".[dev]"
rm -f "$VENV"/.setup-*
touch "$STAMP"
echo "setup: environment ready in $VENV"
