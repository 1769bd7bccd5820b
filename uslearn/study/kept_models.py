"""Which trials of a study keep their MLflow model (``log_models``, ``--log-models``).

A trial's model is its ResNet18 package (≈ 45 MB, ``benchmarks/model_storage.py``): logged by
every trial, a 1 000-trial search writes ≈ 45 GB. The study's policy (``spec.MODEL_POLICIES``):

- ``all``: every trial logs its model when it finishes, as ``uslearn train --mlflow`` does.
- ``best`` (default): a trial cannot know at its end whether it will be the best of its cell,
  so none logs its model then. Each keeps ``best.pt`` and writes ``package.json`` into its
  output folder (a complete model package), and when the study ends the driver logs the model
  of each cell's best finished trial by the study's metric from that folder
  (``log_cell_models``) and removes the folder's copy of the weights. A search is one cell:
  its best trial. Logging is idempotent (a model already logged is found with MLflow's
  logged-model search), so a resumed study logs nothing twice; a resume that finishes a
  better trial of a cell logs that one's model too.
- ``none``: no trial logs its model.

A trial whose model was not logged can still be registered while its output folder exists
(``log_from_out_dir``, used by ``logged_models.register_run``). Every child run carries the tag
``model_logged``: ``all``, ``best_of_cell``, ``not_logged`` or ``at_register``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study.run_model import first_line, log_model, models_of
from uslearn.study.tracking import client

log = get_logger(__name__)

TAG = "model_logged"
ALL, BEST_OF_CELL, NOT_LOGGED, AT_REGISTER = "all", "best_of_cell", "not_logged", "at_register"


def trial_tag(policy: str) -> str:
    """Return a trial's ``model_logged`` tag when it starts under ``policy``."""
    return ALL if policy == "all" else NOT_LOGGED


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def best_per_cell(runs: list, metric: str, mode: str) -> dict[str, Any]:
    """Return cell -> the run of ``runs`` with the best finite ``metric`` (``mode`` max/min).

    Ties go to the run that started first.
    """
    best: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        value = run.data.metrics.get(metric, math.nan)
        if not math.isfinite(value):
            continue
        cell = run.data.tags.get("cell", "")
        if cell not in best or _better(value, best[cell].data.metrics[metric], mode):
            best[cell] = run
    return best


def finished_children(mlc, exp_id: str, parent_run_id: str) -> list:
    """Return the FINISHED child runs of study invocation ``parent_run_id``."""
    return mlc.search_runs(
        [exp_id],
        filter_string=f"tags.study_run_id = '{parent_run_id}' and attributes.status = 'FINISHED'",
        max_results=10000,
    )


def log_cell_models(
    tracking_uri: str, exp_id: str, parent_run_id: str, metric: str, mode: str
) -> list[str]:
    """Log the model of each cell's best finished trial that has none yet (policy ``best``).

    Never fails the study: a model that cannot be logged leaves a warning, the run's tag
    ``model_error`` and its folder as it was.

    Returns:
        One line per cell whose model was logged now or could not be.
    """
    mlc = client(tracking_uri)
    lines = []
    best = best_per_cell(finished_children(mlc, exp_id, parent_run_id), metric, mode)
    for cell, run in best.items():
        if any(m.status == "READY" for m in models_of(mlc, run)):
            continue  # logged before (a resumed study, or policy all)
        score = f"{metric} {run.data.metrics[metric]:.4f}"
        try:
            log_from_out_dir(mlc, run, BEST_OF_CELL, remove_weights=True)
        except Exception as err:  # noqa: BLE001 - the trials are done; say why and go on
            why = first_line(err)
            log.warning(
                "cell %s: the model of run %s was not logged (%s)", cell, run.info.run_id, why
            )
            mlc.set_tag(run.info.run_id, "model_error", why[:500])
            lines.append(f"cell {cell}: the model of run {run.info.run_id} NOT logged: {why}")
            continue
        lines.append(f"cell {cell}: logged the model of run {run.info.run_id} ({score})")
    return lines


def log_from_out_dir(mlc, run, reason: str, remove_weights: bool = False) -> str:
    """Log the model of ``run`` (an MLflow ``Run``) from its output folder (tag ``out_dir``).

    Args:
        mlc: a client of the run's store.
        run: a finished trial whose model was not logged.
        reason: the ``model_logged`` tag it gets (``best_of_cell`` or ``at_register``).
        remove_weights: delete the folder's ``best.pt`` once it is in MLflow.

    Returns:
        The model's URI, ``models:/<model id>``.

    Raises:
        UserError: the folder or its ``best.pt``/``package.json`` is gone (naming the run and
            the folder).
    """
    run_id = run.info.run_id
    out = run.data.tags.get("out_dir")
    policy = "the study's --log-models policy"
    if not out:
        raise UserError(f"run {run_id} has no logged model and no out_dir tag to log it from")
    folder = Path(out)
    missing = [f for f in ("best.pt", "package.json") if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        gone = "is gone" if not folder.is_dir() else f"holds no {' or '.join(missing)}"
        raise UserError(
            f"run {run_id}: its model was not kept by {policy} and its output folder "
            f"{folder} {gone}, so there is no model to log"
        )
    uri = log_model(mlc, run_id, folder, None)
    mlc.set_tag(run_id, TAG, reason)
    if remove_weights:
        (folder / "best.pt").unlink(missing_ok=True)
    return uri
