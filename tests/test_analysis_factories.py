"""Factories for the analysis tests: a real MLflow sqlite store filled with known values.

No tests live here; the ``test_analysis_*`` modules import these plain functions.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from uslearn.data.dataset import CLASSES

SUPPORTS = dict(zip(CLASSES, (55, 11, 31, 32, 7, 13, 6)))


def trial_metrics(rng: np.random.Generator, base: float) -> dict[str, float]:
    """Return a full set of contract test metrics around ``base`` (per class, weighted, val)."""
    metrics = {}
    for name in ("f1", "precision", "recall"):
        per_class = np.clip(base + rng.normal(0, 0.08, len(CLASSES)), 0.05, 0.99)
        for cls, value in zip(CLASSES, per_class):
            metrics[f"test/{name}/{cls}"] = float(value)
        weights = np.array([SUPPORTS[c] for c in CLASSES], dtype=float)
        metrics[f"test/{name}_weighted"] = float(per_class @ weights / weights.sum())
    for cls in CLASSES:
        metrics[f"test/support/{cls}"] = float(SUPPORTS[cls])
    metrics["val/f1_weighted"] = float(np.clip(base + rng.normal(0, 0.03), 0, 1))
    metrics["best_step"] = float(rng.integers(10, 100))
    return metrics


def lambda_trials(seeds=(0, 1, 2, 3), lams=(0.5, 2.0, 10.0)) -> list[tuple[dict, dict]]:
    """Return (params, metrics) of a PICA vs LSD × λ × seed study (Fig. 5, Table 1)."""
    rng = np.random.default_rng(5)
    trials = []
    for strategy, lam, seed in itertools.product(("pica", "lsd"), lams, seeds):
        base = 0.62 if strategy == "lsd" else 0.55 + 0.02 * np.log(lam)
        params = dict(strategy=strategy, init="random", init_kind="random", lam=lam, k=12)
        params |= dict(alpha=1.01, seed=seed, lr=1e-4, batch_exams=16, image_size=64)
        params |= dict(epochs=3, dataset_fingerprint="abc123", precision="fp32", workers=1)
        trials.append((params, trial_metrics(rng, base)))
    return trials


def fraction_trials(seeds=(0, 1, 2), fractions=(0.1, 1.0)) -> list[tuple[dict, dict]]:
    """Return (params, metrics) of a supervised/One-Head/Two-Head × init × fraction study."""
    rng = np.random.default_rng(6)
    trials = []
    arms = itertools.product(("supervised", "fixmatch_one", "fixmatch_two"), ("imagenet", "x.pt"))
    for (strategy, init), fraction, seed in itertools.product(arms, fractions, seeds):
        kind = "imagenet" if init == "imagenet" else "clustering"
        base = 0.6 + 0.15 * fraction + (0.05 if kind == "clustering" else 0)
        base += {"supervised": 0.0, "fixmatch_one": 0.02, "fixmatch_two": 0.05}[strategy]
        params = dict(strategy=strategy, init=init, init_kind=kind, label_fraction=fraction)
        params |= dict(seed=seed, tau=0.95, lambda_u=1.0, lr=1e-4, steps=20, image_size=64)
        params |= dict(dataset_fingerprint="abc123")
        trials.append((params, trial_metrics(rng, base)))
    return trials


def sweep_trials(seeds=(0, 1, 2)) -> list[tuple[dict, dict]]:
    """Return (params, metrics) of an LSD α sweep plus a Two-Head τ sweep (sensitivity plots)."""
    rng = np.random.default_rng(7)
    trials = []
    for alpha, seed in itertools.product((1.01, 1.1, 1.5), seeds):
        params = dict(strategy="lsd", init="random", lam=2.0, alpha=alpha, seed=seed)
        params |= dict(dataset_fingerprint="abc123")
        trials.append((params, trial_metrics(rng, 0.6 - 0.05 * (alpha - 1))))
    for tau, seed in itertools.product((0.8, 0.95), seeds):
        params = dict(strategy="fixmatch_two", init="imagenet", label_fraction=0.1, tau=tau)
        params |= dict(dataset_fingerprint="abc123")
        trials.append((params | dict(seed=seed), trial_metrics(rng, 0.7 + 0.05 * tau)))
    return trials


def log_study(
    client, experiment_id: str, study: str, trials: list[tuple[dict, dict]], status="FINISHED"
) -> str:
    """Log one study invocation (parent + one nested child per trial); return the parent id."""
    from mlflow.entities import Metric, Param, RunTag

    parent = client.create_run(
        experiment_id,
        run_name=study,
        tags={"study": study, "uslearn_version": "0.1.0", "git_sha": "deadbeef"},
    ).info.run_id
    client.log_batch(parent, params=[Param("n_trials", str(len(trials)))])
    for i, (params, metrics) in enumerate(trials):
        tags = {"study": study, "study_run_id": parent, "mlflow.parentRunId": parent}
        tags |= {"git_sha": "deadbeef", "uslearn_version": "0.1.0"}
        child = client.create_run(experiment_id, run_name=f"trial_{i:03d}", tags=tags).info.run_id
        client.log_batch(
            child,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("note", "factory")],
        )
        client.set_terminated(child, status)
    client.set_terminated(parent)
    return parent


def make_store(root: Path) -> tuple[str, dict[str, str]]:
    """Create a sqlite MLflow store under ``root`` with four studies; return (uri, parents).

    ``lambda_study`` is logged twice (an older invocation with one odd trial, then the full
    one); ``fraction_study`` has every Fig. 6 arm; ``sweep_study`` sweeps α (LSD) and τ
    (Two-Head); ``empty_study`` has a parent and no trials.
    """
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("uslearn", artifact_location=str(root / "artifacts"))
    older = [(dict(strategy="pica", lam=1.0, seed=9), trial_metrics(np.random.default_rng(0), 0.3))]
    parents = {"lambda_study_old": log_study(client, exp, "lambda_study", older)}
    parents["lambda_study"] = log_study(client, exp, "lambda_study", lambda_trials())
    parents["fraction_study"] = log_study(client, exp, "fraction_study", fraction_trials())
    parents["sweep_study"] = log_study(client, exp, "sweep_study", sweep_trials())
    parents["empty_study"] = log_study(client, exp, "empty_study", [])
    return uri, parents


def scratch_dir() -> Path:
    """Return a new directory removed at exit, in RAM when the machine has /dev/shm.

    sqlite syncs every MLflow write to disk; on a busy shared disk that alone made a store of
    80 runs take 25 s instead of 3 s.
    """
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="uslearn-analysis-", dir=shm))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def shared_store() -> tuple[str, dict[str, str]]:
    """Return ``make_store`` of one scratch directory, built once per test process."""
    return make_store(scratch_dir())


def new_store(name: str = "e") -> tuple[object, str, str]:
    """Return (client, uri, experiment id) of a fresh, empty store in a scratch directory."""
    from mlflow.tracking import MlflowClient

    root = scratch_dir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, uri, client.create_experiment(name, artifact_location=str(root / "a"))
