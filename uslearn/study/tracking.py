"""MLflow for training runs: one parent run per study invocation, one child run per trial, and
the single path that logs a training run (a study trial or ``uslearn train --mlflow``).

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent API's
"active run": trials run in threads of Ray actors, and a restored or retried trial must find
its existing child run (tag ``trial_id``) instead of opening a duplicate (docs/CONTRACTS.md).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from uslearn import __version__
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study import run_page

log = get_logger(__name__)
PARAM_BATCH = 100  # MLflow's limit on params per log_batch call
# Set in the same log_batch as a trial's final metrics: a retried trial logs them only once.
FINAL_TAG = "final_metrics_logged"
# What ``uslearn.strategies.run`` writes into its out_dir, and the model package's description
# (``uslearn.inference.package``); only these are uploaded.
RUN_FILES = (
    "metrics.json",
    "config.json",
    "thresholds.json",
    "per_class.csv",
    "history.json",
    "best.pt",
    "cluster_labels.csv",
    "package.json",
)


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

    # MLflow prints "View run/experiment at" links when a run ends on a server; they open the
    # GenAI overview, not the runs table (see runs_table_url), so the study prints its own.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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


def describe(tracking_uri: str, run_id: str, text: str) -> None:
    """Set the run's description (the "Description" box of the MLflow UI) to ``text``."""
    client(tracking_uri).set_tag(run_id, "mlflow.note.content", text)


def metric_key(text: str) -> str:
    """Return ``text`` as a valid MLflow metric key part (``"pica lam=0.5"`` → ``pica_lam_0.5``)."""
    return re.sub(r"[^\w.\-]+", "_", text).strip("_") or "_"


def log_summary(tracking_uri: str, run_id: str, summary: Mapping[str, float]) -> None:
    """Log the study's summary metrics (see ``runner.summary_metrics``) on the parent run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in summary.items() if math.isfinite(float(v))]
    mlc = client(tracking_uri)
    for start in range(0, len(items), 1000):  # MLflow's limit on metrics per log_batch call
        mlc.log_batch(run_id, metrics=items[start : start + 1000])


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


def run_params(config: Mapping[str, Any], fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Return a training run's params: the resolved config (with ``init_kind`` and ``family``),
    the dataset fingerprint and ``extra`` (a trial adds its ``profile``)."""
    from uslearn.strategies import resolved_config

    return {**resolved_config(dict(config)), "dataset_fingerprint": fingerprint, **extra}


class TrackedRun:
    """The MLflow run of one training run: a study trial's child run or a standalone run.

    A trial's run (``parent_id`` and ``trial_id`` given) is created once and reused by the
    trial's retries and resumes; a standalone run (``uslearn train --mlflow``) is always new.

    Args:
        tracking_uri: the tracking URI.
        exp_id: the experiment id.
        run_name: a readable name (a trial's cell and seed).
        tags: extra tags (``study``, ``cell``, ``git_sha``, ``dataset_fingerprint``, ...).
        parent_id: the study's parent run id (None for a standalone run).
        trial_id: the Tune trial id, stable across restore and retries (None: standalone).
    """

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_id: str | None = None,
        trial_id: str | None = None,
    ):
        self.mlc = client(tracking_uri)
        existing = None
        if parent_id is not None and trial_id is not None:
            existing = find_child(tracking_uri, exp_id, parent_id, trial_id)
        self.last_step = -math.inf
        self.final_logged = False
        if existing is None:
            study_tags = (
                {"mlflow.parentRunId": parent_id, "study_run_id": parent_id, "trial_id": trial_id}
                if parent_id is not None
                else {}
            )
            all_tags = {**study_tags, "uslearn_version": __version__, **tags}
            self.run_id = self.mlc.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
            if parent_id is not None:
                self.run_id = _one_child(self.mlc, exp_id, parent_id, trial_id, self.run_id)
        else:
            self.run_id = existing
            self.mlc.update_run(existing, status="RUNNING")
            # Evaluations logged before the interruption are replayed from the checkpoint's
            # step on; skip the ones already in MLflow so each step appears once.
            data = self.mlc.get_run(existing).data
            self.last_step = data.metrics.get("step", -math.inf)
            self.final_logged = data.tags.get(FINAL_TAG) == "true"
            log.info("trial %s: continuing MLflow run %s", trial_id, existing)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's params (identical values may be logged again on a retry)."""
        log_params(self.mlc, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], final: bool = False) -> None:
        """Log one evaluation's metrics at its ``step`` (all final metrics when ``final``)."""
        from mlflow.entities import Metric, RunTag

        step = metrics.get("step")
        if not final and step is not None and step <= self.last_step:
            return
        if final and self.final_logged:
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
        # One request (one transaction on the server): a retried request carries the same
        # timestamps, which the server's store takes once, and the tag marks the final
        # metrics as logged for a retried trial.
        tags = [RunTag(FINAL_TAG, "true")] if final else []
        self.mlc.log_batch(self.run_id, metrics=items, tags=tags)
        self.final_logged = self.final_logged or final
        if step is not None:
            self.last_step = max(self.last_step, step)

    def log_artifacts(self, out_dir: str | Path, data: Any) -> None:
        """Upload the run's output files and log its model package as the MLflow model ``model``
        (``run_model.log_run_model``: the kept weights are stored there, once)."""
        from uslearn.study.run_model import IN_MODEL, log_run_model

        for name in RUN_FILES:
            if name not in IN_MODEL and (Path(out_dir) / name).is_file():
                self.mlc.log_artifact(self.run_id, str(Path(out_dir) / name))
        log_run_model(self.mlc, self.run_id, out_dir, data)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run."""
        for key, value in tags.items():
            self.mlc.set_tag(self.run_id, key, str(value))

    def finish(self, status: str) -> None:
        """End the run with ``status``."""
        self.mlc.set_terminated(self.run_id, status=status)


def _one_child(mlc, exp_id: str, parent_id: str, trial_id: str, created: str) -> str:
    """Return the trial's one child run id, deleting duplicates a retried request created.

    A create request that reached the server just before it restarted is sent again by the
    client's retries, and MLflow has no idempotent create: keep the oldest run of the trial.
    """
    runs = mlc.search_runs(
        [exp_id],
        filter_string=f"tags.study_run_id = '{parent_id}' and tags.trial_id = '{trial_id}'",
        max_results=10,
    )
    if len(runs) <= 1:
        return created
    keep, *extra = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    for run in extra:
        mlc.delete_run(run.info.run_id)
    log.warning("trial %s: deleted %d duplicate MLflow run(s)", trial_id, len(extra))
    return keep.info.run_id


def tracked_run(
    tracked: TrackedRun | None,
    config: Mapping[str, Any],
    data: Any,
    out_dir: Path,
    report: Callable[[dict[str, float], str | None], None],
    resume_from: str | None = None,
) -> dict[str, float]:
    """Run one strategy (``uslearn.strategies.run``) and log it to ``tracked``; return its metrics.

    Every evaluation's metrics go to MLflow, then to ``report``; at the end the final metrics,
    the output files and the model package (the MLflow model ``model``), and the run ends
    FINISHED. A run that raises ends FAILED, one that
    Tune's scheduler stops (SystemExit at a report) KILLED with the tag ``stopped_early``.
    ``tracked`` is None on DDP ranks other than 0: they train but do not log.
    """
    from uslearn.strategies import run

    def on_evaluation(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if tracked is not None:
            tracked.log_metrics(metrics)
        report(metrics, checkpoint_dir)

    try:
        final = run(
            dict(config), data, report=on_evaluation, out_dir=out_dir, resume_from=resume_from
        )
    except SystemExit:
        if tracked is not None:
            tracked.set_tags({"stopped_early": "by the Tune scheduler"})
            tracked.finish("KILLED")
        raise
    except BaseException:
        if tracked is not None:
            tracked.finish("FAILED")
        raise
    if tracked is not None:
        tracked.log_metrics(final, final=True)
        tracked.log_artifacts(out_dir, data)
        run_page.describe_run(tracked.mlc, tracked.run_id, out_dir, final)
        tracked.finish("FINISHED")
    return final
