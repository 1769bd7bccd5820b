"""Logging a finished run's model: its package as the MLflow model ``model`` of the run.

``tracking.TrackedRun.log_artifacts`` journals it when a run finishes (``send_run_files``), so
``uslearn train --mlflow`` and study trials log it the same way: the ``python_function``
flavour of ``uslearn.inference.pyfunc`` with a signature, the package directory as its artifact
``package`` and the package's facts as metadata and tags. The kept weights (``best.pt``) are
stored there only, not a second time as a run artifact (``IN_MODEL``).

Everything goes through the run's own ``MlflowClient``: ``Model.log`` and the fluent API follow
the process-wide store, which may be another one (docs/RAY_MLFLOW.md, "logged models").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from uslearn.log import get_logger

log = get_logger(__name__)

MODEL_NAME = "model"  # the logged model's name within its run: runs:/<run id>/model
# Run files stored in the model (its package), not again as run artifacts.
IN_MODEL = ("best.pt", "package.json")


def models_of(mlc, run, name: str = MODEL_NAME) -> list:
    """Return the logged models ``name`` of ``run`` (an MLflow ``Run``) that did not fail."""
    from mlflow.entities import LoggedModelStatus

    models = mlc.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
    )
    return [m for m in models if m.status != LoggedModelStatus.FAILED]


def send_run_files(tracking_uri: str):
    """Return how a run's journalled ``artifacts`` entry is sent: ``send(run_id, entry)``.

    The entry names the output folder, the dataset and whether to log the model. Sending it
    again (a replay after a lost answer) uploads the same files over themselves and logs the
    model only if the run has no usable one yet.
    """
    from uslearn.study.tracking import RUN_FILES, client

    def send(run_id: str, entry) -> None:
        mlc = client(tracking_uri)
        if "files" in entry:  # named files only (``TrackedRun.log_files``)
            for path in entry["files"]:
                mlc.log_artifact(run_id, path)
            return
        out_dir = Path(entry["out_dir"])
        for name in RUN_FILES:
            if name not in IN_MODEL and (out_dir / name).is_file():
                mlc.log_artifact(run_id, str(out_dir / name))
        if entry.get("model", True):
            if not _has_model(mlc, run_id):
                log_run_model(mlc, run_id, out_dir, entry["data"])
        else:
            # A trial whose model the study does not keep now (``kept_models``): its folder
            # becomes a model package, which the study's end or `uslearn register` logs.
            _package_only(mlc, run_id, out_dir, entry["data"])

    return send


def _has_model(mlc, run_id: str) -> bool:
    from mlflow.entities import LoggedModelStatus

    models = models_of(mlc, mlc.get_run(run_id))
    return any(m.status == LoggedModelStatus.READY for m in models)


def _package_only(mlc, run_id: str, out_dir: Path, data) -> None:
    """Write ``package.json`` into ``out_dir`` and upload it; never fail the finished run."""
    from uslearn.data.dataset import Dataset
    from uslearn.inference.package import write_package

    try:
        path = write_package(out_dir, Dataset.open(data))
    except Exception as err:  # noqa: BLE001 - a finished run stays finished
        why = first_line(err)
        log.warning("run %s: its model package could not be written (%s)", run_id, why)
        mlc.set_tag(run_id, "model_error", why[:500])
        return
    mlc.log_artifact(run_id, str(path))


def log_run_model(mlc, run_id: str, out_dir: str | Path, data) -> None:
    """Log the run's package as its MLflow model ``model``; never fail the finished run.

    A model that cannot be logged leaves a warning, the tag ``model_error`` (why, one line)
    and ``best.pt`` as a run artifact instead, so the weights are kept either way.
    """
    from uslearn.study.delivery import is_transient

    out_dir = Path(out_dir)
    try:
        log_model(mlc, run_id, out_dir, data)
    except Exception as err:  # noqa: BLE001 - a finished run stays finished
        if is_transient(err):
            raise  # the server is away: the journal keeps the entry and sends it again
        why = first_line(err)
        log.warning("run %s: its model could not be logged (%s)", run_id, why)
        mlc.set_tag(run_id, "model_error", why[:500])
        if (out_dir / "best.pt").is_file():
            mlc.log_artifact(run_id, str(out_dir / "best.pt"))


def log_model(mlc, run_id: str, out_dir: str | Path, data) -> str:
    """Write the run's package into ``out_dir`` and log it as the MLflow model ``model``.

    Args:
        mlc: an ``MlflowClient`` of the run's store.
        run_id: the run that trained the model.
        out_dir: its output folder (best.pt, thresholds.json, config.json, ...).
        data: the training dataset (a ``Dataset`` or its directory), or None when
            ``out_dir`` already holds its ``package.json`` (a trial whose model is logged
            later: ``kept_models``).

    Returns:
        The model's URI, ``models:/<model id>``.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from uslearn.data.dataset import Dataset
    from uslearn.inference import pyfunc
    from uslearn.inference.package import ModelPackage, write_package

    if data is not None:
        write_package(out_dir, data if isinstance(data, Dataset) else Dataset.open(data))
    package = ModelPackage.load(out_dir)
    run = mlc.get_run(run_id)
    facts = package.describe()
    model = mlc.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags=facts,
        params=dict(run.data.params),  # as Model.log does: the model's page shows its config
        model_type=package.family,
    )
    try:
        mlc.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        description = Model(
            artifact_path=model.artifact_location,
            model_uuid=model.model_id,
            run_id=run_id,
            model_id=model.model_id,
        )
        with tempfile.TemporaryDirectory() as tmp, quiet_mlflow():
            saved = pyfunc.save(package, Path(tmp) / MODEL_NAME, description)
            mlc.log_model_artifacts(model.model_id, str(saved))
    except BaseException:
        mlc.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlc.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's per-file progress bar and its advice to add type hints / an example."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(type hints|input example).*")
            yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def first_line(err: BaseException) -> str:
    """Return the first line of an exception's message (its type's name when it has none)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
