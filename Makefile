# recpipe: `make run` runs the pipeline locally on generated data, `make test` runs the tests.
# Both set up .venv first; set-up is skipped while the stamp for constraints.txt exists.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONF ?= conf/local.yaml
SET ?=
SET_ARGS := $(foreach s,$(SET),--set $(s))
# `make run ALS_RUNS=every`: an ALS run for every train day as well (steady-state als_score; ~45 s a day).
ALS_RUNS ?= first
# The stamp's name carries a hash of what decides the environment, so a change re-runs set-up.
SETUP_HASH := $(shell cat constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
STAMP := $(VENV)/.setup-$(SETUP_HASH)
PYTEST_ARGS ?=

.PHONY: help setup run run-cluster test report nightly mlflow-server cluster-up cluster-down dist pack notebooks clean-data clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned stack, check Java 17 (once per constraints)

$(STAMP):
	@bash scripts/setup.sh $(STAMP)

run: setup  ## generate the default data set and run the nightly for its last day (or DATE) locally
	@DATE=$(DATE) ALS_RUNS=$(ALS_RUNS) bash scripts/run_local.sh $(CONF) $(SET_ARGS)

test: setup  ## run the test suite (real Spark, MLflow, Petastorm; no GPU)
	$(PY) -m pytest $(PYTEST_ARGS)

MOVIELENS_CONF ?= conf/movielens.yaml
# The GroupLens ml-latest-small.zip where `recpipe datasets fetch ml-latest-small` put it, or the CI's copy
# (or MOVIELENS=another zip or folder). `?=` defers the look-up to the recipe, after setup made the venv.
MOVIELENS ?= $(shell $(VENV)/bin/recpipe datasets path ml-latest-small 2>/dev/null)
report: setup  ## whole-history run on MovieLens (MOVIELENS=zip or folder) and docs/results.md
	@bash scripts/report.sh $(MOVIELENS_CONF) "$(MOVIELENS)" docs/results.md $(SET_ARGS)

nightly: setup  ## the nightly for DATE=YYYY-MM-DD: clean, features, als, train, promote, score
	@test -n "$(DATE)" || { echo "usage: make nightly DATE=YYYY-MM-DD [CONF=...] [SET=...]"; exit 2; }
	$(VENV)/bin/recpipe nightly --conf $(CONF) $(SET_ARGS) --date $(DATE)

MLFLOW_PORT ?= 5000
mlflow-server: setup  ## MLflow tracking server on 127.0.0.1:MLFLOW_PORT, store under the data root
	$(VENV)/bin/recpipe mlflow-server --conf $(CONF) $(SET_ARGS) --port $(MLFLOW_PORT)

CLUSTER_CONF ?= conf/cluster.yaml
cluster-up: setup  ## Spark standalone master + workers on 127.0.0.1 (conf/cluster.yaml), pids in var/cluster
	$(VENV)/bin/recpipe cluster-up --conf $(CLUSTER_CONF) $(SET_ARGS)

cluster-down: setup  ## stop exactly the processes cluster-up started
	$(VENV)/bin/recpipe cluster-down --conf $(CLUSTER_CONF) $(SET_ARGS)

run-cluster: dist  ## `make run` on the cluster-up cluster: spark-submit per stage, MLflow via a tracking server
	@DATE=$(DATE) bash scripts/run_cluster.sh $(CLUSTER_CONF) $(SET_ARGS)

dist: setup  ## build the wheel that spark-submit ships with --py-files
	rm -rf dist build
	$(VENV)/bin/pip wheel --quiet --no-deps --no-build-isolation -w dist .
	@ls dist/*.whl

notebooks: setup  ## open notebooks/ in a notebook server on 127.0.0.1 (installs the notebooks extra once)
	@$(PY) -c "import notebook" 2>/dev/null || $(VENV)/bin/pip install --quiet -c constraints.txt -e ".[notebooks]"
	$(VENV)/bin/jupyter notebook --notebook-dir=notebooks --ip=127.0.0.1

# The executors' environment: recpipe[PACK_EXTRAS] from the wheel (not editable: venv-pack
# refuses an editable install) in a venv of its own, packed for `--archives dist/env.tar.gz#env`.
# Keep PACK_OUT a .tar.gz: Spark unpacks that with tar, which keeps bin/python's link to the
# interpreter (its Java untar of a plain .tar refuses it). PACK_PIP_ARGS go to pip install.
PACK_EXTRAS ?= train
PACK_VENV ?= build/pack-venv
PACK_OUT ?= dist/env.tar.gz
PACK_PIP_ARGS ?=
PACK_LEVEL ?= 4
PYTHON ?= python3.11
pack: dist  ## dist/env.tar.gz: a packed venv of the wheel with [PACK_EXTRAS] (default train) for the executors
	rm -rf $(PACK_VENV) $(PACK_OUT)
	$(PYTHON) -m venv $(PACK_VENV)
	$(PACK_VENV)/bin/pip install --quiet $(PACK_PIP_ARGS) "$$(ls dist/recpipe-*.whl)$(if $(PACK_EXTRAS),[$(PACK_EXTRAS)])" \
		-c constraints.txt
	$(VENV)/bin/venv-pack --quiet --compress-level $(PACK_LEVEL) -p $(PACK_VENV) -o $(PACK_OUT)
	@ls -l $(PACK_OUT)

clean-data:  ## remove the local data root (var/)
	rm -rf var

clean: clean-data  ## remove the data root, build outputs and the venv
	rm -rf dist build lib/*.egg-info $(VENV)
