"""How much a study stores: what ``--dry-run`` plans and what the end of a study measured.

A trial's model is dominated by its ResNet18 weights, whose size does not depend on the image
size (convolution kernels and the linear heads have no spatial extent): ``weights_bytes``
measures them by serialising the network's state dict as ``best.pt`` holds it. The rest of
an MLflow model (MLmodel, environment files, the package's small files) and a trial's small run
artifacts are measured constants (``benchmarks/model_storage.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from uslearn.study.spec import Plan

# Measured by benchmarks/model_storage.py and on the demo's store (7 classes): an MLflow
# model's bytes besides the state dict (the config saved in best.pt, 6.8 kB; MLmodel, the
# environment files and the package's small files, 7.2 kB), and a trial's run artifacts
# (thresholds.json, per_class.csv, config.json, metrics.json, history.json,
# cluster_labels.csv, package.json: 5.3 kB for PICA).
MODEL_EXTRA_BYTES = 14_000
RUN_ARTIFACT_BYTES = 5_500


@functools.lru_cache(maxsize=1)
def weights_bytes() -> int:
    """Return the size of a trial's ``best.pt`` (ResNet18 state dict plus a 7-class head)."""
    import io

    import torch

    from uslearn.models import Network

    buffer = io.BytesIO()
    torch.save({"model": Network({"multilabel": 7}).state_dict()}, buffer)
    return buffer.tell()


def fmt_bytes(n: float) -> str:
    """Return ``n`` bytes as text in decimal units (``43.2 MB``, ``1.7 GB``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def models_logged(plan: Plan) -> int:
    """Return how many MLflow models the study logs under its ``log_models`` policy."""
    policy = plan.spec.log_models
    if policy == "all":
        return plan.num_trials()
    if policy == "none":
        return 0
    return 1 if plan.is_search else len(plan.cells)


def plan_lines(plan: Plan) -> list[str]:
    """Return the dry-run's storage lines: MLflow artifacts and the trial folders' best.pt."""
    trials, models = plan.num_trials(), models_logged(plan)
    weights = weights_bytes()
    mlflow = models * (weights + MODEL_EXTRA_BYTES) + trials * RUN_ARTIFACT_BYTES
    which = {
        "best": "the best trial of each cell by " + plan.spec.metric,
        "all": "every trial",
        "none": "no trial",
    }[plan.spec.log_models]
    if plan.is_search and plan.spec.log_models == "best":
        which = f"the best trial of the search by {plan.spec.metric}"
    kept = trials - models if plan.spec.log_models != "all" else 0
    lines = [
        f"models (--log-models {plan.spec.log_models}): {which} logs its model: "
        f"{models} x {fmt_bytes(weights + MODEL_EXTRA_BYTES)}",
        f"storage: MLflow artifacts ~{fmt_bytes(mlflow)} ({models} model(s) + "
        f"{fmt_bytes(RUN_ARTIFACT_BYTES)} of small files per trial); trial folders "
        f"~{fmt_bytes(kept * weights)} ({kept} best.pt of trials whose model is not logged, "
        f"kept for 'uslearn register'; each running trial also holds its checkpoint, "
        f"~{fmt_bytes(4 * weights)})",
    ]
    return lines


def tree_bytes(path: str | Path) -> int:
    """Return the total size of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def artifact_bytes(uri: str, tracking_uri: str) -> int:
    """Return the size of the artifacts under ``uri`` (a local folder, or listed through MLflow)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return tree_bytes(unquote(parsed.path))
    import mlflow

    total, folders = 0, [uri]
    while folders:
        folder = folders.pop()
        for info in mlflow.artifacts.list_artifacts(artifact_uri=folder, tracking_uri=tracking_uri):
            name = info.path.rsplit("/", 1)[-1]
            if info.is_dir:
                folders.append(f"{folder.rstrip('/')}/{name}")
            else:
                total += info.file_size or 0
    return total


def _logged_models(mlc, exp_id: str, run_ids: set[str]) -> Iterable:
    token = None
    while True:
        page = mlc.search_logged_models(experiment_ids=[exp_id], page_token=token)
        yield from (m for m in page if m.source_run_id in run_ids)
        token = page.token
        if not token:
            return


def written_lines(tracking_uri: str, exp_id: str, parent_run_id: str, outputs: Path) -> list[str]:
    """Return the end-of-study storage lines: MLflow artifacts of this invocation's runs and
    models, and the size of its trial folders."""
    from uslearn.study.run_model import first_line
    from uslearn.study.tracking import client

    mlc = client(tracking_uri)
    try:
        runs = mlc.search_runs(
            [exp_id], filter_string=f"tags.study_run_id = '{parent_run_id}'", max_results=10000
        )
        ids = {r.info.run_id for r in runs} | {parent_run_id}
        models = [m for m in _logged_models(mlc, exp_id, ids) if m.status == "READY"]
        in_models = sum(artifact_bytes(m.artifact_location, tracking_uri) for m in models)
        uris = [r.info.artifact_uri for r in runs] + [mlc.get_run(parent_run_id).info.artifact_uri]
        in_runs = sum(artifact_bytes(u, tracking_uri) for u in uris)
    except Exception as err:  # noqa: BLE001 - a summary line, never a failed study
        mlflow_line = f"MLflow artifacts: not measured ({first_line(err)})"
    else:
        mlflow_line = (
            f"written: MLflow artifacts {fmt_bytes(in_runs + in_models)} "
            f"({len(models)} model(s) {fmt_bytes(in_models)}, {len(runs)} trial runs' files "
            f"{fmt_bytes(in_runs)})"
        )
    kept = sum(1 for _ in outputs.glob("*/best.pt")) if outputs.is_dir() else 0
    folder_line = (
        f"  trial folders {fmt_bytes(tree_bytes(outputs))} in {outputs} ({kept} best.pt of "
        "trials whose model is not logged: uslearn register --run ID --name NAME logs one)"
    )
    return [mlflow_line, folder_line]
