# Quick start: `make demo` (the main job on the embedded phantom) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Label Studio lives in its own environment: its Django stack clashes with the project's pins.
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO := label-studio==1.23.2

.PHONY: demo test test-fast test-cluster test-labelstudio labelstudio-env lint format install clean cluster-up cluster-down cluster-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# One machine, one user: Ray's token authentication (on by default in Ray 2.60, which writes
# ~/.ray/auth_token) guards nothing here; a cluster keeps it on (docs/RAY_MLFLOW.md).
demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python studies/lambda_sensitivity.py

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not cluster and not server and not labelstudio"

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not slow and not ray and not cluster and not server and not labelstudio"

# Fault tests on a local rehearsal cluster and on real tracking servers of their own (free
# ports, their own folders), and the slower Ray fault tests: a killed study, a dying trial
# process, a DDP trial's worker group, nodes joining a running study.
test-cluster: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "cluster or server"

# sentry-sdk 3 removed an option Label Studio 1.23 passes at start-up (TypeError): keep 2.x.
$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet '$(LABEL_STUDIO)' 'sentry-sdk<3'
	touch $(LS_STAMP)

labelstudio-env: $(LS_STAMP)

# The curate → Label Studio → import-labelstudio round trip against a real server.
test-labelstudio: $(STAMP) $(LS_STAMP)
	USLEARN_LABELSTUDIO=$(LS_VENV)/bin/label-studio RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m labelstudio

# A local rehearsal of cluster.yaml (docs/STUDIES.md): a Ray head with Ray's fake multi-node
# provider (GPU workers autoscale from 0), PostgreSQL and the MLflow server on it, on 127.0.0.1;
# state in runs/cluster.
cluster-up: $(STAMP)
	PYTHON=$(BIN)/python cluster/rehearsal.sh up

cluster-status: $(STAMP)
	PYTHON=$(BIN)/python cluster/rehearsal.sh status

cluster-down:
	PYTHON=$(BIN)/python cluster/rehearsal.sh down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: cluster-down
	rm -rf $(VENV) $(LS_VENV) runs mlflow.db .pytest_cache
