# Quick start: `make demo` (the main job on the embedded phantom) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-cluster lint format install clean cluster-up cluster-down cluster-status

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
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not cluster"

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not slow and not ray and not cluster"

# Fault tests on a local rehearsal cluster of its own (free ports, its own folders).
test-cluster: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m cluster

# A local rehearsal of cluster.yaml (docs/STUDIES.md): a Ray head with Ray's fake multi-node
# provider (GPU workers autoscale from 0) and the MLflow server on 127.0.0.1; state in runs/cluster.
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
	rm -rf $(VENV) runs mlflow.db .pytest_cache
