"""What a study invocation settles before and prints after Ray: profile, data, header, footer.

Kept apart from ``runner`` so that ``--dry-run`` and ``--help`` never import Ray.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study.spec import Plan

log = get_logger(__name__)
SMOKE_PRESET = "tiny"
SMOKE_LENGTHS = {"epochs": 1, "steps": 2}


def absolute_uri(uri: str) -> str:
    """Return ``uri`` with a relative sqlite path made absolute (trials run in other folders)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def visible_gpus(address: str | None) -> float:
    """Return the GPUs a study would see: the cluster's if one is given, else this machine's."""
    if address or os.environ.get("RAY_ADDRESS"):
        return cluster_resources(address).get("GPU", 0.0)
    import torch

    return float(torch.cuda.device_count())


def choose_profile(args: argparse.Namespace, state: dict[str, Any]) -> tuple[str, str]:
    """Return (profile, why): ``--profile``, the resumed run's, else by the GPUs visible."""
    if args.profile:
        return args.profile, "chosen with --profile"
    if args.smoke_test:
        return "cpu-demo", "smoke test"
    if state.get("profile"):
        return state["profile"], "the profile of the run being resumed"
    if visible_gpus(args.address) > 0:
        return "gpu", "no --profile given and a GPU is visible"
    return "cpu-demo", "no --profile given and no GPU visible"


def smoke(plan: Plan) -> Plan:
    """Return ``plan`` cut to one trial of its first cell on the tiny phantom, a few steps."""
    from uslearn.strategies.registry import UNITS

    spec = plan.spec
    if spec.search is not None:
        spec = replace(spec, search=replace(spec.search, num_samples={"default": 1}, asha=False))
    # The smoke test's length wins over any other (the study's, the command line's).
    base = {k: v for k, v in plan.base.items() if k not in UNITS}
    overrides = {k: v for k, v in plan.overrides.items() if k not in UNITS}
    profile = replace(plan.profile, dataset=SMOKE_PRESET, reduces="smoke test: 1 trial, 1 epoch")
    return replace(
        plan,
        spec=spec,
        profile=profile,
        base={**base, "eval_every": 2, "image_size": 32},
        overrides=overrides,
        lengths=SMOKE_LENGTHS,
        cells=plan.cells[:1],
        seeds=plan.seeds[:1],
    )


def header(plan: Plan, why: str, script: str) -> str:
    """Return the lines printed before a study starts (what runs, and how to run it in full)."""
    prof = plan.profile
    lines = [
        f"== {plan.spec.name}: {plan.spec.title}",
        f"profile {prof.name} ({why}): reduces {prof.reduces}",
    ]
    if prof.name == "cpu-demo":
        lines.append(
            f"the full study: python studies/{script} --profile gpu on a GPU machine or a Ray "
            f"cluster (ray up cluster.yaml), or --profile paper --data DIR for the paper's protocol"
        )
    lines += [f"note: {n}" for n in plan.spec.notes]
    return "\n".join(lines)


def data_path(args: argparse.Namespace, state: dict[str, Any], plan: Plan) -> Path:
    """Return the dataset directory: ``--data``, the resumed run's, or the profile's phantom."""
    from uslearn.paths import data_dir

    if args.data:
        return Path(args.data).resolve()
    if state.get("data_path"):
        return Path(state["data_path"])
    return data_dir() / plan.profile.dataset


def ensure_dataset(path: Path, plan: Plan, smoke_test: bool):
    """Return the opened dataset at ``path``, generating the profile's phantom if it is missing.

    Raises:
        UserError: ``--data`` pointed at a folder that is not a dataset (nothing is generated
            over a user's path unless it is the profile's phantom location).
    """
    from uslearn.data.dataset import Dataset
    from uslearn.paths import data_dir

    if (path / "meta.json").is_file():
        return Dataset.open(path)
    if path.parent != data_dir() or path.name != plan.profile.dataset:
        raise UserError(
            f"{path}: not a dataset directory (no meta.json); see 'uslearn data --help'"
        )
    from uslearn.phantom import ensure_phantom

    print(
        f"generating the '{plan.profile.dataset}' phantom dataset in {path} (once)...", flush=True
    )
    return ensure_phantom(path, preset=plan.profile.dataset, seed=0)


def dataset_counts(path: Path) -> tuple[dict[str, int] | None, float]:
    """Return (images per split, mean images per exam) of the dataset at ``path`` if it exists."""
    if not (path / "meta.json").is_file():
        return None, 0.0
    from uslearn.data.dataset import Dataset
    from uslearn.data.splits import split_counts

    manifest = Dataset.open(path).manifest
    table = split_counts(manifest)
    per_exam = len(manifest) / max(1, manifest["exam_id"].nunique())
    return {split: int(n) for split, n in table["images"].items()}, per_exam


def cluster_resources(address: str | None) -> dict[str, float]:
    """Return the resources of the cluster at ``address`` / ``$RAY_ADDRESS``, or of this machine."""
    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ["RAY_ADDRESS"])
        return dict(ray.cluster_resources())
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def footer(plan: Plan, inv, frame: pd.DataFrame) -> str:
    """Return the end-of-study text: best/mean per cell, failures, where runs and figures are."""
    import json

    from uslearn.study.runner import STATE_FILE, summarise
    from uslearn.study.tracking_uri import ui_hint

    state = json.loads((inv.exp_dir / STATE_FILE).read_text())
    parent = state["parent_run_id"]
    metric = plan.spec.metric
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        if plan.is_search:
            keys = [*plan.spec.search.space, metric, "test/f1_weighted"]
            done = frame[frame["status"] == "ok"].dropna(subset=["test/f1_weighted"])
            top = done.sort_values(metric, ascending=plan.spec.mode == "min").head(5)
            lines = ["", f"== {plan.spec.name}: best trials that ran to the end, by {metric}"]
            lines.append(top[["trial", *keys]].to_string(index=False))
            lines.append(f"{len(frame) - len(done)} trial(s) stopped early by ASHA")
        else:
            lines = ["", f"== {plan.spec.name}: best / mean over seeds per cell"]
            lines.append(summarise(frame, metric).round(4).to_string())
    failed = frame[frame["status"] != "ok"]
    if not failed.empty:
        lines.append(f"{len(failed)} trial(s) failed: continue them with --resume")
    lines.append(
        f"MLflow: parent run {parent}, experiment '{plan.spec.name}' at {inv.tracking_uri}"
    )
    lines.append(f"  runs table: {ui_hint(inv.tracking_uri, state.get('experiment_id'))}")
    lines.append(f"trials: {inv.exp_dir / 'results.csv'} (outputs in {inv.exp_dir / 'outputs'})")
    return "\n".join(lines)
