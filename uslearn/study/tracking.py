"""MLflow for studies: one parent run per study invocation, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent API's
"active run": trials run in threads of Ray actors, and a restored or retried trial must find
its existing child run (tag ``trial_id``) instead of opening a duplicate (docs/CONTRACTS.md).
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from uslearn import __version__
from uslearn.errors import UserError
from uslearn.log import get_logger

log = get_logger(__name__)
PARAM_BATCH = 100  # MLflow's limit on params per log_batch call


def git_sha(cwd: str | Path | None = None) -> str:
    """Return the current commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    try:
        root = Path(cwd or Path(__file__).parent)
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def client(tracking_uri: str):
    """Return an ``MlflowClient`` for ``tracking_uri`` (the folder of a sqlite file is created)."""
    from mlflow.tracking import MlflowClient

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """Return the id of MLflow experiment ``name``, creating it if needed.

    With a local sqlite store the artifacts go beside the database (``mlartifacts/``) rather
    than into ``./mlruns`` of whatever directory the study was started from.
    """
    mlc = client(tracking_uri)
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return mlc.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process created it between our lookup and our create.
        found = mlc.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_parent(
    tracking_uri: str, exp_id: str, study: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    """Return the id of a new parent run for one study invocation (run name = study name)."""
    mlc = client(tracking_uri)
    all_tags = {"study": study, "uslearn_version": __version__, **tags}
    run = mlc.create_run(exp_id, run_name=study, tags=all_tags)
    log_params(mlc, run.info.run_id, params)
    return run.info.run_id


def reopen(tracking_uri: str, run_id: str) -> None:
    """Mark an existing run RUNNING again (a resumed study); raise UserError if it is gone."""
    mlc = client(tracking_uri)
    try:
        mlc.get_run(run_id)
    except Exception as err:
        raise UserError(f"MLflow run {run_id} is not in {tracking_uri}: {err}") from None
    mlc.update_run(run_id, status="RUNNING")


def finish(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """End run ``run_id`` with ``status`` (FINISHED, FAILED or KILLED)."""
    client(tracking_uri).set_terminated(run_id, status=status)


def log_params(mlc, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` as strings in batches MLflow accepts."""
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), PARAM_BATCH):
        mlc.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def find_child(tracking_uri: str, exp_id: str, parent_id: str, trial_id: str) -> str | None:
    """Return the id of the child run of ``parent_id`` for Tune trial ``trial_id``, if any."""
    runs = client(tracking_uri).search_runs(
        [exp_id],
        filter_string=f"tags.study_run_id = '{parent_id}' and tags.trial_id = '{trial_id}'",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def finished_metrics(
    tracking_uri: str, exp_id: str, parent_id: str, trial_id: str
) -> dict[str, float] | None:
    """Return the final metrics of trial ``trial_id`` if its child run already FINISHED.

    A driver killed between a trial's end and Tune's next state snapshot leaves the trial
    unfinished for Tune but finished in MLflow; on ``--resume`` it must not run again.
    """
    run_id = find_child(tracking_uri, exp_id, parent_id, trial_id)
    if run_id is None:
        return None
    run = client(tracking_uri).get_run(run_id)
    return dict(run.data.metrics) if run.info.status == "FINISHED" else None


class ChildRun:
    """The MLflow child run of one trial; created once, reused by retries and resumes.

    Args:
        tracking_uri: the study's tracking URI.
        exp_id: the study's experiment id.
        parent_id: the study's parent run id.
        trial_id: the Tune trial id (stable across restore and retries).
        run_name: a readable name (the cell and seed).
        tags: extra tags (``study``, ``cell``, ``git_sha``, ``dataset_fingerprint``, ...).
    """

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        parent_id: str,
        trial_id: str,
        run_name: str,
        tags: Mapping[str, str],
    ):
        self.mlc = client(tracking_uri)
        existing = find_child(tracking_uri, exp_id, parent_id, trial_id)
        self.last_step = -math.inf
        if existing is None:
            all_tags = {
                "mlflow.parentRunId": parent_id,
                "study_run_id": parent_id,
                "trial_id": trial_id,
                "uslearn_version": __version__,
                **tags,
            }
            self.run_id = self.mlc.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
        else:
            self.run_id = existing
            self.mlc.update_run(existing, status="RUNNING")
            # Evaluations logged before the interruption are replayed from the checkpoint's
            # step on; skip the ones already in MLflow so each step appears once.
            self.last_step = self.mlc.get_run(existing).data.metrics.get("step", -math.inf)
            log.info("trial %s: continuing MLflow run %s", trial_id, existing)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the trial's params (identical values may be logged again on a retry)."""
        log_params(self.mlc, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], final: bool = False) -> None:
        """Log one evaluation's metrics at its ``step`` (all final metrics when ``final``)."""
        from mlflow.entities import Metric

        step = metrics.get("step")
        if not final and step is not None and step <= self.last_step:
            return
        now = int(time.time() * 1000)
        # Final (test) metrics carry no step of their own: put them at the last evaluation's.
        at = step if step is not None else (self.last_step if math.isfinite(self.last_step) else 0)
        at = int(at)
        items = [
            Metric(k, float(v), now, at)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        self.mlc.log_batch(self.run_id, metrics=items)
        if step is not None:
            self.last_step = max(self.last_step, step)

    def log_artifacts(self, out_dir: str | Path) -> None:
        """Upload the run's output files (metrics, thresholds, per-class table, best weights)."""
        files = [p for p in Path(out_dir).iterdir() if p.is_file()]
        for path in files:
            self.mlc.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the child run."""
        for key, value in tags.items():
            self.mlc.set_tag(self.run_id, key, str(value))

    def finish(self, status: str) -> None:
        """End the child run with ``status``."""
        self.mlc.set_terminated(self.run_id, status=status)


def ui_hint(tracking_uri: str) -> str:
    """Return the command that shows ``tracking_uri`` in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


def env_tracking_uri() -> str | None:
    """Return ``$MLFLOW_TRACKING_URI`` if set."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None
