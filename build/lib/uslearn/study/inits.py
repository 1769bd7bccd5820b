"""Initialisations a study may depend on: a deep-clustering checkpoint, ImageNet weights.

Strategy 4 of the paper fine-tunes from the best LSD model of an earlier study; the studies
look it up in MLflow (best validation score among the LSD child runs of the latest invocation
of a clustering study) unless a path is given. ImageNet weights cannot be downloaded at run
time here, so an ImageNet arm runs only when the weights file is present.
"""

from __future__ import annotations

import os
from pathlib import Path

from uslearn.log import get_logger

log = get_logger(__name__)
# Studies whose LSD runs may initialise others, most specific first.
CLUSTERING_STUDIES = ("unsupervised_table", "lambda_sensitivity", "search_lsd")


def imagenet_weights() -> Path | None:
    """Return ResNet18's ImageNet weights file if present ($USLEARN_IMAGENET or the hub cache)."""
    explicit = os.environ.get("USLEARN_IMAGENET")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    from uslearn.models import imagenet_weights_file

    file = imagenet_weights_file()
    return file if file.is_file() else None


def best_clustering_checkpoint(
    tracking_uri: str, studies: tuple[str, ...] = CLUSTERING_STUDIES, strategy: str = "lsd"
) -> tuple[Path, str] | None:
    """Return (checkpoint file, description) of the best ``strategy`` run, or None.

    Searches the latest invocation of each study in ``studies`` in order and takes the child
    run with the highest ``val/f1_weighted`` (validation: the test set never selects a model).
    The run's ``best.pt`` is used in place when its output folder is still there, otherwise
    downloaded from the run's MLflow model (``logged_models.run_weights``).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for study in studies:
        experiment = client.get_experiment_by_name(study)
        if experiment is None:
            continue
        parents = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.study = '{study}' and attributes.status != 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
        parents = [p for p in parents if "mlflow.parentRunId" not in p.data.tags]
        if not parents:
            continue
        children = client.search_runs(
            [experiment.experiment_id],
            filter_string=(
                f"tags.study_run_id = '{parents[0].info.run_id}' and "
                f"params.strategy = '{strategy}' and attributes.status = 'FINISHED'"
            ),
            order_by=["metrics.`val/f1_weighted` DESC"],
            max_results=1,
        )
        if not children:
            continue
        best = children[0]
        local = Path(best.data.tags.get("out_dir", "")) / "best.pt"
        if not local.is_file():
            from uslearn.paths import runs_dir
            from uslearn.study.logged_models import run_weights

            local = run_weights(
                tracking_uri, best.info.run_id, runs_dir() / "dc_init" / best.info.run_id
            )
            if local is None:
                log.warning("run %s: no kept weights in its model or artifacts", best.info.run_id)
                continue
        score = best.data.metrics.get("val/f1_weighted", float("nan"))
        why = (
            f"best {strategy} run {best.info.run_id} of study '{study}' "
            f"(val/f1_weighted {score:.3f})"
        )
        return local, why
    return None


def dc_init(tracking_uri: str, given: str | None) -> tuple[str | None, str]:
    """Return (deep-clustering checkpoint or None, a sentence saying where it came from).

    Raises:
        UserError: ``given`` (``--dc-init``) does not exist.
    """
    from uslearn.errors import UserError

    if given:
        if not Path(given).exists():
            raise UserError(f"--dc-init {given}: no such file or directory")
        return str(Path(given).resolve()), f"deep-clustering init from --dc-init {given}"
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).is_file():
        found = None  # no local MLflow store yet: nothing to look up
    else:
        found = best_clustering_checkpoint(tracking_uri)
    if found is None:
        return None, (
            "no deep-clustering checkpoint found in MLflow: run studies/unsupervised_table.py "
            "(or lambda_sensitivity.py) first, or pass --dc-init PATH"
        )
    return str(found[0]), f"deep-clustering init: {found[1]}"


def imagenet_init() -> tuple[str | None, str]:
    """Return (ImageNet weights file or None, a sentence for the study's notes).

    Studies pass the file as the ``weights`` of their ImageNet arms, so the trials load
    exactly the file that was found here (``$USLEARN_IMAGENET`` or the torch hub cache).
    """
    file = imagenet_weights()
    if file is not None:
        return str(file.resolve()), f"ImageNet weights: {file}"
    return None, (
        "ImageNet weights not found (torch hub cache or $USLEARN_IMAGENET); nothing is "
        "downloaded at run time, so the ImageNet arms are skipped"
    )


def best_init(tracking_uri: str, given: str | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """Return (config values of the best backbone available, notes saying which and why).

    Deep-clustering checkpoint (``given`` or the best LSD run in MLflow), else ImageNet
    weights, else random weights.
    """
    dc, dc_note = dc_init(tracking_uri, given)
    weights, imagenet_note = imagenet_init()
    if dc is not None:
        init = {"init": dc}
    elif weights is not None:
        init = {"init": "imagenet", "weights": weights}
    else:
        init = {"init": "random"}
    return init, (dc_note, imagenet_note, f"init used: {init['init']}")
