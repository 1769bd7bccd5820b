"""Where runs, datasets and the default MLflow store live (relative to the working directory)."""

from __future__ import annotations

import os
from pathlib import Path


def runs_dir() -> Path:
    """Return the directory for run outputs: ``$USLEARN_RUNS`` or ``./runs``."""
    return Path(os.environ.get("USLEARN_RUNS", "runs")).resolve()


def data_dir() -> Path:
    """Return the directory for generated datasets: ``$USLEARN_DATA`` or ``./data``."""
    return Path(os.environ.get("USLEARN_DATA", "data")).resolve()


def default_tracking_uri() -> str:
    """Return ``$MLFLOW_TRACKING_URI`` or a sqlite file under the runs directory.

    MLflow 3 refuses the plain file store, so local runs use sqlite (docs/RAY_MLFLOW.md).
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"
