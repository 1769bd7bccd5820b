"""A run's MLflow model, once logged: registered, opened by reference, its weights found.

Every finished run (``uslearn train --mlflow`` and every study trial, both through
``tracking.tracked_run``) logs its model package as the MLflow model ``model`` of its run
(``runs:/<run id>/model``; ``run_model.log_run_model``). ``register_run`` puts a run's model in
the model registry (``models:/<name>/<version>``), ``register_best`` a study's best trial by
validation F1 (the test set never selects a model), ``open_model`` reads any reference, and
``run_weights`` finds a run's kept weights (in its model, else in its artifacts).

Everything goes through a client bound to the URI given (``tracking.client``): MLflow's fluent
API (``mlflow.register_model``, ``runs:/`` resolution in ``download_artifacts``) follows the
process-wide store instead, which may be another one.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from pathlib import Path

from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study.run_model import MODEL_NAME, first_line, quiet_mlflow
from uslearn.study.tracking import client

log = get_logger(__name__)

SELECT_BY = "val/f1_weighted"


def _logged_model(mlc, run, name: str = MODEL_NAME):
    """Return the newest logged model ``name`` of ``run`` that did not fail; UserError if none."""
    from mlflow.entities import LoggedModelStatus

    run_id = run.info.run_id
    models = mlc.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    # A retried trial may have logged its model before it was interrupted: take the last one.
    usable = [m for m in models if m.status != LoggedModelStatus.FAILED]
    if not usable:
        raise UserError(
            f"run {run_id} has no logged model '{name}' (runs of 'uslearn train --mlflow' and "
            "study trials log one when they finish)"
        )
    return max(usable, key=lambda m: m.creation_timestamp)


def _get_run(mlc, run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"run {run_id}: not found in {tracking_uri} ({first_line(err)})") from None


def run_weights(tracking_uri: str, run_id: str, dest: str | Path) -> Path | None:
    """Return a local copy of the kept weights (``best.pt``) of run ``run_id``, or None.

    They live in the run's logged model; a run whose model could not be logged (tag
    ``model_error``) keeps them as its artifact ``best.pt``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlc = client(tracking_uri)
    run = mlc.get_run(run_id)
    Path(dest).mkdir(parents=True, exist_ok=True)
    with quiet_mlflow():
        try:
            location = _logged_model(mlc, run).artifact_location
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location.rstrip('/')}/artifacts/package/best.pt",
                    dst_path=str(dest),
                    tracking_uri=tracking_uri,
                )
            )
        except (UserError, MlflowException, OSError):
            pass
        try:
            return Path(mlc.download_artifacts(run_id, "best.pt", str(dest)))
        except (MlflowException, OSError):
            return None


def register_run(tracking_uri: str, run_id: str, name: str):
    """Register run ``run_id``'s model as a new version of registered model ``name``.

    Returns:
        The ``ModelVersion`` (its ``version`` makes ``models:/<name>/<version>``); its tags
        hold the package's facts (strategy, family, classes, sizes, F1, dataset fingerprint).

    Raises:
        UserError: no such run, or the run has no logged uslearn model.
    """
    from mlflow.exceptions import MlflowException

    mlc = client(tracking_uri)
    model = _logged_model(mlc, _get_run(mlc, run_id, tracking_uri))
    try:
        mlc.create_registered_model(name)
    except MlflowException as err:
        if "already exists" not in str(err).lower():
            raise UserError(f"--register {name!r}: {first_line(err)}") from None
    version = mlc.create_model_version(
        name,
        source=model.artifact_location,
        run_id=run_id,
        tags={**model.tags, "source_run": run_id},
        model_id=model.model_id,
    )
    log.info("registered run %s as models:/%s/%s", run_id, name, version.version)
    return version


def best_child_run(tracking_uri: str, parent_run_id: str) -> tuple[str, float]:
    """Return (run id, validation F1) of the finished child run of ``parent_run_id`` with the
    highest ``val/f1_weighted``.

    Raises:
        UserError: no finished child run with that metric.
    """
    mlc = client(tracking_uri)
    parent = _get_run(mlc, parent_run_id, tracking_uri)
    children = mlc.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'"
        ),
        max_results=10000,
    )
    scored = [
        (run.info.run_id, run.data.metrics[SELECT_BY])
        for run in children
        if math.isfinite(run.data.metrics.get(SELECT_BY, math.nan))
    ]
    if not scored:
        raise UserError(f"study run {parent_run_id}: no finished trial logged {SELECT_BY}")
    return max(scored, key=lambda item: item[1])


def register_best(tracking_uri: str, parent_run_id: str, name: str) -> str:
    """Register the best trial (by validation F1) of a study invocation; return a summary line."""
    run_id, score = best_child_run(tracking_uri, parent_run_id)
    version = register_run(tracking_uri, run_id, name)
    return (
        f"registered the best trial (run {run_id}, {SELECT_BY} {score:.4f}) as "
        f"models:/{name}/{version.version}"
    )


def _download_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="uslearn-model-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def open_model(spec: str, tracking_uri: str | None = None):
    """Return the ``ModelPackage`` a model reference names.

    Args:
        spec: a local directory (a ``uslearn train --out`` run directory, a package, a
            downloaded MLflow model), ``runs:/<run id>[/model]`` or ``models:/<name>/<version>``
            (also ``models:/<name>@<alias>`` and ``models:/<logged model id>``).
        tracking_uri: the MLflow tracking URI for ``runs:/`` and ``models:/`` references
            (default: ``uslearn.paths.default_tracking_uri()``).

    Raises:
        UserError: the directory, run, registered model or version does not exist.
    """
    from uslearn.inference.package import ModelPackage

    if not spec.startswith(("runs:/", "models:/")):
        return ModelPackage.load(spec)
    import mlflow
    from mlflow.exceptions import MlflowException

    from uslearn.paths import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    try:
        location = _model_location(spec, tracking_uri)
        with quiet_mlflow():
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(_download_dir()), tracking_uri=tracking_uri
            )
    except (MlflowException, OSError) as err:
        raise UserError(f"model {spec}: not found in {tracking_uri} ({first_line(err)})") from None
    return ModelPackage.load(local)


def _model_location(spec: str, tracking_uri: str) -> str:
    """Return the artifact location of the model a ``runs:/`` or ``models:/`` reference names."""
    mlc = client(tracking_uri)
    if spec.startswith("runs:/"):
        run_id, _, name = spec.removeprefix("runs:/").strip("/").partition("/")
        return _logged_model(mlc, mlc.get_run(run_id), name or MODEL_NAME).artifact_location
    ref = spec.removeprefix("models:/").strip("/")
    if ref.startswith("m-"):  # a logged model's own id
        return mlc.get_logged_model(ref).artifact_location
    if "@" in ref:
        version = mlc.get_model_version_by_alias(*ref.split("@", 1))
    elif "/" in ref:
        version = mlc.get_model_version(*ref.rsplit("/", 1))
    else:
        raise UserError(f"model {spec}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    if version.source.startswith("models:/m-"):
        return mlc.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    return version.source
