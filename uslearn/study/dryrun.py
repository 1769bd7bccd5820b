"""``--dry-run``: the trial table, the resource plan, the storage and a time estimate, without
running anything.

Plain text built from the plan, the cluster's resources and the dataset's split counts; the
estimate uses the measured per-trial throughput in ``resources.THROUGHPUT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from uslearn.strategies.registry import ENTRIES
from uslearn.study import storage
from uslearn.study.active import split_active, trial_images
from uslearn.study.resources import (
    STARTUP_S,
    concurrency,
    estimate_seconds,
    images_per_trial,
    trial_throughput,
)
from uslearn.study.spec import Plan, swept_keys


def _short(value: Any, width: int = 40) -> Any:
    """Return ``value``, long strings (checkpoint paths) cut to their last ``width`` chars."""
    if isinstance(value, str) and len(value) > width:
        return "..." + value[-width:]
    return value


def trial_table(plan: Plan) -> pd.DataFrame:
    """Return one row per cell (grid) with its swept values and seeds, or one per dimension."""
    if plan.is_search:
        rows = [
            {"dimension": key, "distribution": repr(dist)}
            for key, dist in plan.spec.search.space.items()
        ]
        return pd.DataFrame(rows)
    swept = sorted({k for c in plan.cells for k in c.overrides})
    rows = []
    for cell in plan.cells:
        row: dict[str, Any] = {"cell": cell.name}
        row.update({k: _short(cell.overrides.get(k, plan.base.get(k, ""))) for k in swept})
        row["length"] = _length(plan.trial_config({"cell": cell.name, "seed": plan.seeds[0]}))
        row["seeds"] = ",".join(map(str, plan.seeds))
        rows.append(row)
    return pd.DataFrame(rows)


def _length(config: Mapping[str, Any]) -> str:
    """Return a trial's run length with its unit, e.g. ``3 epochs``."""
    strategy = ENTRIES.get(config.get("strategy"))
    if strategy is None:
        return "?"
    _, active = split_active(config)
    rounds = f" x {active.rounds} rounds" if active else ""
    return f"{strategy.length(config)} {strategy.unit}{rounds}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(
    plan: Plan, counts: Mapping[str, int], per_exam: float, parallel: int
) -> tuple[float, str]:
    """Return (seconds, explanation) for the whole study from the measured throughput figure."""
    res = plan.resources
    device = "cuda" if res.gpus_per_worker > 0 else "cpu"
    size = int(plan.base.get("image_size", 64))
    ips = trial_throughput(device, size, res.gpus_per_worker, res.workers)
    if plan.is_search:
        configs = [plan.trial_config({})] * plan.num_trials()
    else:
        configs = [config for _, _, config in plan.grid_trials()]
    # An active-learning trial trains once per round, on more labels each time (active.py).
    images = [trial_images(c, counts, per_exam, images_per_trial) for c in configs]
    startup = STARTUP_S[res.mode]
    seconds = estimate_seconds(images, ips, parallel, startup)
    why = (
        f"~{ips:,.0f} img/s per trial ({device}, {size} px, from the measured figures in "
        f"uslearn/study/resources.py), ~{sum(images) / len(images):,.0f} images per trial "
        f"(views and evaluation included), {startup:.0f} s start-up per trial, "
        f"{parallel} trial(s) at a time"
    )
    return seconds, why


def describe(
    plan: Plan,
    cluster: Mapping[str, float],
    counts: Mapping[str, int] | None,
    per_exam: float,
    max_concurrent: int | None = None,
) -> str:
    """Return the dry-run text: trials, fixed settings, resources, concurrency, storage,
    estimate."""
    spec, res = plan.spec, plan.resources
    parallel = concurrency(res, cluster, max_concurrent)
    lines = []
    if plan.is_search:
        search = spec.search
        pruner = f"ASHA (grace {search.grace_period} evaluations)" if search.asha else "none"
        lines.append(
            f"{plan.num_trials()} trials: Optuna TPE over {len(search.space)} dimensions, "
            f"pruner {pruner}, ranked by {spec.metric} ({spec.mode})"
        )
    else:
        lines.append(
            f"{plan.num_trials()} trials = {len(plan.cells)} cells x {len(plan.seeds)} seeds, "
            f"no pruner, ranked by {spec.metric} ({spec.mode})"
        )
    lines += ["", trial_table(plan).to_string(index=False), ""]
    if plan.is_search:
        lines.append(f"length: {_length(plan.trial_config({}))} per trial")
    # A value that the grid, the search or an arm sets per trial is not shared: never print it.
    swept = swept_keys(plan.spec)
    shared = ", ".join(f"{k}={v}" for k, v in sorted(plan.base.items()) if k not in swept)
    lines.append(f"shared config: {shared}")
    where = (
        "a Ray Train TorchTrainer per trial (DDP)"
        if res.mode == "train"
        else "the Tune trial process (no worker group to start)"
    )
    placed = f", placement {res.placement}" if res.workers > 1 else ""
    lines.append(
        f"per trial: {res.workers} worker(s) x ({res.cpus_per_worker:g} CPU, "
        f"{res.gpus_per_worker:g} GPU){placed}, run in {where}"
    )
    have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
    lines.append(f"cluster: {have} -> {parallel} trial(s) at a time")
    for note in spec.notes:
        lines.append(f"note: {note}")
    lines += storage.plan_lines(plan)
    if counts is None:
        lines.append(
            "estimate: unknown until the dataset exists (it is generated on the first run)"
        )
    else:
        seconds, why = estimate(plan, counts, per_exam, parallel)
        lines.append(f"estimate: {_fmt_duration(seconds)} ({why})")
    return "\n".join(lines)
