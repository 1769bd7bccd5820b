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
import tempfile
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
    # MLflow's client would retry an unreachable server for minutes in silence; every longer
    # wait is ours, and announced (delivery.py).
    from uslearn.study.delivery import HTTP_DEFAULTS

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
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
    """Return the id of the child run of ``parent_id`` for Tune trial ``trial_id``, if any.

    A search: asked only when a trial's journal cannot say (a create whose answer was lost).
    """
    runs = client(tracking_uri).search_runs(
        [exp_id],
        filter_string=f"tags.study_run_id = '{parent_id}' and tags.trial_id = '{trial_id}'",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def run_params(config: Mapping[str, Any], fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Return a training run's params: the resolved config (with ``init_kind`` and ``family``),
    the dataset fingerprint and ``extra`` (a trial adds its ``profile``)."""
    from uslearn.strategies import resolved_config

    return {**resolved_config(dict(config)), "dataset_fingerprint": fingerprint, **extra}


class TrackedRun:
    """The MLflow run of one training run: a study trial's child run or a standalone run.

    Every write goes through the run's journal in ``run_dir/tracking/`` (``journal.Journal``)
    and is sent by ``delivery.Delivery``: a server that is away or busy never fails the run,
    and what it could not take is sent, in order and once, when it answers again. The journal
    also makes the run's identity local: a trial retried or resumed in the same folder
    continues its run without searching for it, and a new trial's run costs one request.

    Args:
        tracking_uri: the tracking URI.
        exp_id: the experiment id.
        run_name: a readable name (a trial's cell and seed).
        tags: extra tags (``study``, ``cell``, ``git_sha``, ``dataset_fingerprint``, ...).
        parent_id: the study's parent run id (None for a standalone run).
        trial_id: the Tune trial id, stable across restore and retries (None: standalone).
        run_dir: the run's output folder, home of its journal (None: a temporary folder, so
            nothing survives the process).

    Attributes:
        keep_model: log the run's model when it finishes (a study trial under the policy
            ``best`` or ``none`` sets it False: ``kept_models``).
    """

    keep_model = True

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_id: str | None = None,
        trial_id: str | None = None,
        run_dir: str | Path | None = None,
    ):
        from uslearn.study.delivery import Delivery
        from uslearn.study.journal import Journal
        from uslearn.study.run_model import send_run_files

        folder = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="usl-run-"))
        self.journal = Journal(folder)
        label = f"trial {run_name}" if trial_id is not None else f"run {folder}"

        def find_existing() -> str | None:
            if parent_id is None or trial_id is None:
                return None
            return find_child(tracking_uri, exp_id, parent_id, trial_id)

        self.delivery = Delivery(
            tracking_uri, self.journal, label, find_existing, send_run_files(tracking_uri)
        )
        if self.journal.run_id is None and not self.journal.entries:
            study_tags = (
                {"mlflow.parentRunId": parent_id, "study_run_id": parent_id, "trial_id": trial_id}
                if parent_id is not None
                else {}
            )
            all_tags = {**study_tags, "uslearn_version": __version__, **tags}
            self.delivery.write(
                "create",
                experiment_id=exp_id,
                run_name=run_name,
                tags=all_tags,
                time=_now_ms(),
                tracking_uri=tracking_uri,  # what ``uslearn sync`` sends a kept journal to
            )
        else:
            # A retried trial or a resumed run: evaluations before the interruption are
            # replayed from the checkpoint's step on and skipped here (each step appears once).
            self.delivery.write("reopen")
            log.info("%s: continuing its MLflow run %s", label, self.journal.run_id or "(pending)")

    @property
    def run_id(self) -> str | None:
        """Return the MLflow run id (None while the server has not yet taken the create)."""
        return self.journal.run_id

    @property
    def backlog(self) -> int:
        """Return the number of writes kept in the journal, not yet sent."""
        return self.delivery.backlog

    def log_params(self, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        """Log the run's params (and ``tags``) in one request where MLflow's limits allow."""
        # A resumed run keeps the values it logged first (MLflow refuses a changed param; a
        # resume may change only the run's length).
        logged = {k for e in self.journal.entries for k, _ in e.get("params", ())}
        items = [[k, str(v)] for k, v in params.items() if k not in logged]
        tag_items = [[k, str(v)] for k, v in (tags or {}).items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.journal.append("batch", params=items[start : start + PARAM_BATCH])
        if tag_items:
            self.journal.append("batch", tags=tag_items)
        self.delivery.flush()

    def log_metrics(self, metrics: Mapping[str, float], final: bool = False) -> None:
        """Log one evaluation's metrics at its ``step`` (all final metrics when ``final``)."""
        step = metrics.get("step")
        if not final and step is not None and step <= self.journal.last_step:
            return
        if final and self.journal.final_logged:
            return
        now = _now_ms()
        last = self.journal.last_step
        # Final (test) metrics carry no step of their own: put them at the last evaluation's.
        at = int(step if step is not None else (last if math.isfinite(last) else 0))
        items = [
            [k, float(v), now, at]
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        tags = [[FINAL_TAG, "true"]] if final else []
        self.delivery.write("batch", metrics=items, tags=tags, final=final)

    def log_artifacts(self, out_dir: str | Path, data: Any, model: bool = True) -> None:
        """Upload the run's output files and log its package as the MLflow model ``model``
        (``run_model.send_run_files``: the kept weights are stored there, once); ``model=False``
        makes the folder a model package and uploads the small files only (a study trial
        whose model is not kept, ``kept_models``)."""
        self.delivery.write(
            "artifacts",
            out_dir=str(Path(out_dir).resolve()),
            data=str(_data_path(data)),
            model=model,
        )

    def log_files(self, folder: str | Path, *names: str) -> None:
        """Upload the files ``names`` of ``folder`` as run artifacts (through the journal)."""
        paths = [str((Path(folder) / name).resolve()) for name in names]
        self.delivery.write("artifacts", files=paths)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run (one request)."""
        self.delivery.write("batch", tags=[[k, str(v)] for k, v in tags.items()])

    def finish(self, status: str) -> int:
        """End the run with ``status``; return the writes still kept (sent by a later replay)."""
        from uslearn.study.delivery import AT_END

        self.delivery.write("end", patience=AT_END, status=status, time=_now_ms())
        left = self.journal.pending()
        if left:
            evaluations = sum(
                1 for e in left if e["op"] == "batch" and e.get("metrics") and not e.get("final")
            )
            log.warning(
                "%s ended with %d evaluation(s) and %d other write(s) not sent to MLflow at %s, "
                "kept in %s (sent by the next --resume of its study, or: uslearn sync %s)",
                self.delivery.label, evaluations, len(left) - evaluations, self.delivery.uri,
                self.journal.path, self.journal.folder.parent,
            )  # fmt: skip
        return len(left)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _data_path(data: Any) -> Path:
    return Path(getattr(data, "root", data)).resolve()


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
        tracked.log_artifacts(out_dir, data, model=tracked.keep_model)
        if not tracked.backlog:  # the run's page needs the server now; a run it kept goes without
            run_page.describe_run(tracked.delivery.mlc, tracked.run_id, out_dir, final)
        tracked.finish("FINISHED")
    return final


def end_journalled_run(
    tracking_uri: str, run_dir: str | Path, status: str, tags: Mapping[str, str]
) -> None:
    """End the run journalled in ``run_dir`` with ``status`` and ``tags`` (if it has one).

    For a run whose own process is gone (a DDP trial's workers stopped by the scheduler).
    """
    from uslearn.study.delivery import AT_END, Delivery
    from uslearn.study.journal import Journal

    journal = Journal(run_dir)
    if not journal.entries:
        return
    delivery = Delivery(tracking_uri, journal, f"run {Path(run_dir).name}")
    journal.append("batch", tags=[[k, str(v)] for k, v in tags.items()])
    delivery.write("end", patience=AT_END, status=status, time=_now_ms())
