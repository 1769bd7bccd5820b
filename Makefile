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

demo: $(STAMP)
	$(BIN)/python studies/lambda_sensitivity.py

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not cluster and not server"

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not slow and not ray and not cluster and not server"

# Fault tests on a local rehearsal cluster and on real tracking servers of their own (free
# ports, their own folders).
test-cluster: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "cluster or server"

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
	rm -rf $(VENV) runs mlflow.db .pytest_cache
