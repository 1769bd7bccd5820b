"""Model packages in MLflow: log a run's model, register it, open any model reference.

Every finished run (``uslearn train --mlflow``, every study trial) logs its package as an
MLflow model named ``model`` (``runs:/<run id>/model``): the ``python_function`` flavour of
``uslearn.inference.pyfunc`` with a signature, the package directory as its artifact and the
package's facts as metadata. ``register_run`` puts a run's model into the model registry
(``models:/<name>/<version>``); ``register_best`` does so for a study's best run by validation
F1 (the test set never selects a model).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from uslearn.data.dataset import Dataset
from uslearn.errors import UserError
from uslearn.inference.package import ModelPackage, write_package
from uslearn.log import get_logger

log = get_logger(__name__)

MODEL_NAME = "model"  # the logged model's name within its run: runs:/<run id>/model
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
SELECT_BY = "val/f1_weighted"


def requirements() -> list[str]:
    """Return the pip requirements of a logged model (the versions installed here).

    ``uslearn`` itself is not on PyPI: install this repository where the model is loaded.
    """
    from importlib.metadata import version

    names = ("torch", "torchvision", "numpy", "pandas", "pillow", "scipy", "mlflow")
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def log_run_model(tracking_uri: str, run_id: str, run_dir: str | Path, data: Dataset) -> str:
    """Write the run's package and log it as MLflow model ``model`` of run ``run_id``.

    Args:
        tracking_uri: where the run lives.
        run_id: the run that trained the model.
        run_dir: its output directory (best.pt, thresholds.json, config.json, ...).
        data: the training dataset (classes, stored size, import settings).

    Returns:
        The model's URI (``models:/m-...``); ``runs:/<run_id>/model`` names it too.
    """
    import mlflow
    from mlflow.models import Model

    from uslearn.inference.pyfunc import signature

    write_package(run_dir, data)
    package = ModelPackage.load(run_dir)
    mlflow.set_tracking_uri(tracking_uri)
    # The logged model joins the fluent API's experiment: make it the run's (a study trial's
    # process has none set, which would file the model under "Default").
    mlflow.set_experiment(experiment_id=_client(tracking_uri).get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        package_dir = package.save(Path(tmp) / "package")
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(ENTRY),
            artifacts={"package": str(package_dir)},
            signature=signature(package),
            pip_requirements=requirements(),
            metadata=package.describe(),
            tags=package.describe(),
        )
    return info.model_uri


def log_trial_model(
    tracking_uri: str, run_id: str, run_dir: str | Path, data_path: str
) -> str | None:
    """Log a finished study trial's model (``log_run_model``); return its URI, or None.

    A trial that trained to the end stays a finished trial when its model cannot be logged:
    the failure is logged as a warning and as the run's ``model_error`` tag instead.
    """
    try:
        return log_run_model(tracking_uri, run_id, run_dir, Dataset.open(data_path))
    except Exception as err:  # noqa: BLE001 - any failure here must not fail the trial
        log.warning("run %s: its model could not be logged: %s", run_id, _first_line(err))
        with contextlib.suppress(Exception):  # the warning above already says it
            _client(tracking_uri).set_tag(run_id, "model_error", _first_line(err)[:500])
        return None


@contextlib.contextmanager
def _quiet_mlflow():
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


def _client(tracking_uri: str):
    """Return a client whose tracking store *and* model registry are ``tracking_uri``.

    Never the fluent API's registry: it follows the process-wide URI, which may name another
    store (the default ./mlflow.db) than the one the command was given.
    """
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _logged_model(client, run, name: str):
    """Return the logged model ``name`` of ``run``; UserError when it has none."""
    run_id = run.info.run_id
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    if not models:
        raise UserError(
            f"run {run_id} has no logged model '{name}' (runs of 'uslearn train --mlflow' and "
            "study trials log one when they finish)"
        )
    return models[0]


def register_run(tracking_uri: str, run_id: str, name: str):
    """Register run ``run_id``'s model as a new version of registered model ``name``.

    Returns:
        The ``ModelVersion`` (its ``version`` makes ``models:/<name>/<version>``); its tags
        hold the package's facts (strategy, family, classes, sizes, F1, dataset fingerprint).

    Raises:
        UserError: no such run, or the run has no logged uslearn model.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"run {run_id}: not found in {tracking_uri} ({_first_line(err)})") from None
    model = _logged_model(client, run, MODEL_NAME)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "already exists" not in str(err).lower():
            raise
    version = client.create_model_version(
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
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
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


def open_model(spec: str, tracking_uri: str | None = None) -> ModelPackage:
    """Return the package a model reference names.

    Args:
        spec: a local directory (a ``uslearn train --out`` run directory, a package, a
            downloaded MLflow model), ``runs:/<run id>[/model]`` or ``models:/<name>/<version>``
            (also ``models:/<name>@<alias>``).
        tracking_uri: the MLflow tracking URI for ``runs:/`` and ``models:/`` references.

    Raises:
        UserError: the directory, run, registered model or version does not exist.
    """
    if not spec.startswith(("runs:/", "models:/")):
        return ModelPackage.load(spec)
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        location = _model_location(spec, tracking_uri)
        with _quiet_mlflow():
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(_download_dir()), tracking_uri=tracking_uri
            )
    except (MlflowException, OSError) as err:
        raise UserError(f"model {spec}: not found in {tracking_uri} ({_first_line(err)})") from None
    return ModelPackage.load(local)


def _model_location(spec: str, tracking_uri: str) -> str:
    """Return the artifact location of the model a ``runs:/`` or ``models:/`` reference names.

    Resolved through a client bound to ``tracking_uri``: MLflow's own resolution of these URIs
    goes through the process-wide default store whatever ``download_artifacts`` is told.
    """
    client = _client(tracking_uri)
    if spec.startswith("runs:/"):
        run_id, _, name = spec.removeprefix("runs:/").strip("/").partition("/")
        return _logged_model(client, client.get_run(run_id), name or MODEL_NAME).artifact_location
    ref = spec.removeprefix("models:/").strip("/")
    if ref.startswith("m-"):  # a logged model's own id
        return client.get_logged_model(ref).artifact_location
    if "@" in ref:
        version = client.get_model_version_by_alias(*ref.split("@", 1))
    elif "/" in ref:
        version = client.get_model_version(*ref.rsplit("/", 1))
    else:
        raise UserError(f"model {spec}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    if version.source.startswith("models:/m-"):
        return client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    return version.source
