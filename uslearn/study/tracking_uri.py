"""A tracking URI before and after a study: is it there, and where does its UI show the runs.

``probe`` answers within seconds whether a URI can be reached and written (MLflow's own client
retries an unreachable server for minutes); ``runs_table_url`` and ``ui_hint`` say what to
open in the MLflow UI. Neither imports MLflow, so a bad URI is refused before anything heavy
starts (docs/RUNS.md, "Checks before torch").
"""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from uslearn.errors import EnvError, UserError, is_environment_error

PROBE_TIMEOUT_S = 5.0


def probe(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check within seconds that ``tracking_uri`` can be reached and written; return None.

    MLflow's own client retries an unreachable server for minutes before it raises, and a
    study would only find out after Ray started; this asks once, with a short timeout.
    Server URIs (``http(s)://``) must answer ``/health`` and the experiments API; a
    ``sqlite:///`` file must be creatable or writable (a write lock is taken and released);
    other schemes are left to MLflow.

    Raises:
        UserError: one line naming the URI and what failed.
    """
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        _probe_server(tracking_uri.rstrip("/"), timeout_s)
    elif scheme == "sqlite":
        _probe_sqlite(tracking_uri, timeout_s)


def _probe_server(base: str, timeout_s: float) -> None:
    hint = "start it (make cluster-up, or cluster/head_services.sh mlflow-start) or pass another --mlflow"
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout_s) as response:
                response.read(256)
        except urllib.error.HTTPError as err:
            raise UserError(
                f"MLflow tracking URI {base}: {path.split('?')[0]} answered HTTP {err.code} "
                f"({err.reason}); is this an MLflow tracking server?"
            ) from None
        except (TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            what = (
                f"unreachable (no answer within {timeout_s:g} s)"
                if "timed out" in str(reason)
                else f"unreachable ({reason})"
            )
            raise UserError(f"MLflow tracking URI {base}: {what}; {hint}") from None


def _probe_sqlite(tracking_uri: str, timeout_s: float) -> None:
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    where = f"MLflow tracking URI {tracking_uri}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fault = EnvError if is_environment_error(err) else UserError  # permission, disk: exit 1
        raise fault(f"{where}: cannot create {path.parent} ({err.strerror})") from None
    if path.exists() and not path.is_file():
        raise UserError(f"{where}: {path} is not a file")
    if not os.access(path.parent, os.W_OK):
        # sqlite writes its journal beside the database.
        raise EnvError(f"{where}: the folder {path.parent} is not writable")
    existed = path.exists()
    try:
        with sqlite3.connect(path, timeout=timeout_s) as db:
            db.execute("BEGIN IMMEDIATE")  # a write lock: fails on a read-only file
            db.execute("ROLLBACK")
            db.execute("PRAGMA schema_version").fetchone()  # fails on a file that is not sqlite
    except sqlite3.Error as err:
        raise UserError(
            f"{where}: {path} cannot be written as an sqlite database ({err})"
        ) from None
    finally:
        if not existed and path.exists() and path.stat().st_size == 0:
            path.unlink()  # leave no empty file behind; MLflow creates it


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """Return the MLflow UI link that opens the experiment's runs table.

    MLflow 3's UI opens an experiment on its GenAI overview unless the browser's "GenAI /
    Model training" switch was flipped; ``workflowType=machine_learning`` selects the runs
    table regardless (the experiment tag ``mlflow.experimentKind`` does not).
    """
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )


def ui_hint(tracking_uri: str, experiment_id: str | None = None) -> str:
    """Return how to open ``tracking_uri``'s runs table (of ``experiment_id``) in the MLflow UI."""
    server = tracking_uri.startswith(("http://", "https://"))
    base = tracking_uri if server else "http://127.0.0.1:5000"
    url = runs_table_url(base, experiment_id) if experiment_id is not None else base
    if server:
        return f"open {url}"
    return f"{mlflow_command()} ui --backend-store-uri {tracking_uri} --port 5000, then open {url}"


def mlflow_command() -> str:
    """Return how to call the ``mlflow`` beside this Python (``.venv/bin/mlflow`` after ``make
    demo``), so the printed line works without activating the environment."""
    beside = Path(sys.executable).parent / "mlflow"
    if not beside.is_file():
        return "mlflow"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)
