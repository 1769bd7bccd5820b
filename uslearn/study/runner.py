"""Run a resolved study: Ray Tune over the trials, one MLflow parent run, resume, summary.

``execute`` is the whole path a study script takes once its plan is validated: connect to Ray
(a running cluster or a local one), open or reopen the parent run, build a ``Tuner`` (grid:
Tune's own ``grid_search`` and no pruner; search: Optuna TPE behind a ``ConcurrencyLimiter``,
optionally ASHA) or restore it with ``--resume``, fit, and summarise per cell.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from uslearn import files
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study import kept_models, tracking
from uslearn.study.delivery import patiently, replay_trials
from uslearn.study.resources import concurrency
from uslearn.study.spec import Plan
from uslearn.study.trial import TrialContext, trial_name, tune_trial

log = get_logger(__name__)
STATE_FILE = "study.json"  # in the Tune experiment folder: what --resume needs to continue
DRIVER_RESOURCE = "TRAIN_DRIVER"  # custom resource the per-trial Train driver asks for


@dataclass(frozen=True)
class Invocation:
    """Where one study invocation lives and what it logs to.

    Attributes:
        exp_dir: the Tune experiment folder (``<storage>/<study>/<profile>-<timestamp>``).
        tracking_uri: MLflow tracking URI.
        data_path: dataset directory.
        fingerprint: the dataset's fingerprint.
        study_file: path of the ``studies/*.py`` file (a tag of every run).
        resume: continue the experiment in ``exp_dir`` instead of starting it.
        max_concurrent: ``--max-concurrent`` (None = what fits).
        options: the plan-shaping flags, saved so that ``--resume`` rebuilds the same plan.
        command: the command line that started (or resumed) the study, for the parent run's
            description.
    """

    exp_dir: Path
    tracking_uri: str
    data_path: Path
    fingerprint: str
    study_file: str
    resume: bool
    max_concurrent: int | None
    options: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def new_exp_dir(storage: Path, study: str, profile: str) -> Path:
    """Return a new experiment folder path (not created): ``<storage>/<study>/<profile>-<UTC>``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return storage / study / f"{profile}-{stamp}"


def latest_state(storage: Path, study: str) -> tuple[Path, dict[str, Any]]:
    """Return the newest experiment folder of ``study`` and its saved state, for ``--resume``.

    Raises:
        UserError: no earlier invocation of the study under ``storage``.
    """
    candidates = sorted((storage / study).glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(
            f"--resume: no earlier run of study '{study}' under {storage / study}; "
            "run it once without --resume"
        )
    path = candidates[-1]
    return path.parent, json.loads(path.read_text())


def connect(address: str | None, mode: str) -> dict[str, float]:
    """Connect to Ray (``address``, ``$RAY_ADDRESS`` or a new local Ray); return its resources.

    A local Ray gets the custom ``TRAIN_DRIVER`` resource that GPU/DDP trials' driver functions
    ask for, so the CPUs and GPUs stay for the Train workers (docs/RAY_MLFLOW.md).

    Raises:
        UserError: a cluster without ``TRAIN_DRIVER`` when trials need Ray Train.
    """
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # The dashboard (ray[default]) is what frees the Train workers of a trial stopped
            # early; in-process trials have none, so skip its start-up time and memory.
            # address="local": a new Ray, as documented; without it ray.init joins any Ray
            # already running on this machine (someone else's, without TRAIN_DRIVER).
            ray.init(
                address="local",
                resources={DRIVER_RESOURCE: 1},
                include_dashboard=mode == "train",
            )
    resources = dict(ray.cluster_resources())
    if mode == "train" and resources.get(DRIVER_RESOURCE, 0) <= 0:
        raise UserError(
            f"the Ray cluster has no '{DRIVER_RESOURCE}' resource, which the per-trial Ray Train "
            "driver needs: start the head with "
            f"ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 1}}' "
            "(cluster.yaml does this)"
        )
    return resources


def _trainable(plan: Plan, ctx: TrialContext):
    """Return the Tune trainable with the study context bound and its resource request."""
    from ray import tune

    res = plan.resources
    if res.mode == "train":
        request = {DRIVER_RESOURCE: 0.01}
    else:
        request = {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
    return tune.with_resources(tune.with_parameters(tune_trial, ctx=ctx), request)


def _name_trial(plan: Plan, trial) -> str:
    return trial_name(plan, trial.config, trial.trial_id)


def build_tuner(plan: Plan, ctx: TrialContext, inv: Invocation, parallel: int):
    """Return a new ``Tuner`` for ``plan``, or the restored one with ``inv.resume``."""
    from ray import tune

    # With num_to_keep=1 Tune snapshots the experiment at every checkpoint (what --resume
    # needs) and warns that it does so often; the snapshots are small here, so silence it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = _trainable(plan, ctx)
    if inv.resume:
        if not tune.Tuner.can_restore(str(inv.exp_dir)):
            raise UserError(f"--resume: {inv.exp_dir} holds no restorable Tune experiment")
        # Finished trials stay finished; unfinished and errored ones go on from their last
        # checkpoint, and the Optuna searcher's state is restored with the experiment.
        return tune.Tuner.restore(str(inv.exp_dir), trainable=trainable, resume_errored=True)
    spec = plan.spec
    name_fn = functools.partial(_name_trial, plan)
    run_config = tune.RunConfig(
        name=inv.exp_dir.name,
        storage_path=str(inv.exp_dir.parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
    )
    if not plan.is_search:
        space = {
            "cell": tune.grid_search([c.name for c in plan.cells]),
            "seed": tune.grid_search(list(plan.seeds)),
        }
        tune_config = tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            # Only --max-concurrent caps a grid: Tune runs what the cluster fits as it grows, and
            # the trials waiting for resources are what an autoscaler starts nodes for. A cap
            # from the resources at the start held a cluster whose nodes were still joining
            # (or GPU nodes autoscaling from 0) at that width, down to one trial at a time.
            max_concurrent_trials=inv.max_concurrent,
            # Trials share resources, so a finished trial's process takes the next one: torch,
            # the strategies and MLflow are imported once per process, not once per trial.
            reuse_actors=True,
            trial_name_creator=name_fn,
            trial_dirname_creator=name_fn,
        )
        return tune.Tuner(
            trainable, param_space=space, tune_config=tune_config, run_config=run_config
        )
    return tune.Tuner(
        trainable,
        param_space=_tune_space(plan),
        tune_config=_search_config(plan, parallel, name_fn),
        run_config=run_config,
    )


def _tune_space(plan: Plan) -> dict[str, Any]:
    """Return the Tune search space of a search plan."""
    from ray import tune

    from uslearn.study.spec import Choice, LogUniform, Uniform

    space = {}
    for key, dist in plan.spec.search.space.items():
        if isinstance(dist, LogUniform):
            space[key] = tune.loguniform(dist.low, dist.high)
        elif isinstance(dist, Uniform):
            space[key] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, Choice):
            space[key] = tune.choice(list(dist.values))
    return space


def _search_config(plan: Plan, parallel: int, name_fn):
    """Return the TuneConfig of a search: Optuna TPE, limited concurrency, ASHA if asked."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from uslearn.strategies.registry import UNITS, entry

    spec, search = plan.spec, plan.spec.search
    # TPE learns from finished trials: too many at once and it degenerates to random search.
    searcher = ConcurrencyLimiter(OptunaSearch(seed=plan.seeds[0]), max_concurrent=parallel)
    scheduler = None
    if search.asha:
        # Time runs in the strategy's own unit (epochs or steps), read from the metric the loop
        # reports at every evaluation. max_t lies past the run's length so that ASHA never stops
        # a trial at its last evaluation, before its test metrics.
        strategy = entry(plan.trial_config({})["strategy"])
        length = strategy.length(plan.trial_config({}))
        scheduler = ASHAScheduler(
            time_attr=UNITS[strategy.unit],
            max_t=length + 1,
            grace_period=min(search.grace_period, length),
        )
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=search.samples(plan.profile.name),
        reuse_actors=True,
        trial_name_creator=name_fn,
        trial_dirname_creator=name_fn,
    )


def execute(plan: Plan, inv: Invocation, address: str | None = None) -> pd.DataFrame:
    """Run (or resume) the study; return one row per trial (see ``results_frame``).

    Writes ``results.csv`` and ``study.json`` into the experiment folder; the parent run is
    FINISHED when every trial finished, FAILED otherwise (``--resume`` retries the rest).
    Under ``log_models="best"`` each cell's best model is logged after the Tuner (kept_models).
    """
    spec = plan.spec
    cluster = connect(address, plan.resources.mode)
    parallel = concurrency(plan.resources, cluster, inv.max_concurrent)
    exp_id = tracking.experiment_id(inv.tracking_uri, spec.name)
    state_path = inv.exp_dir / STATE_FILE
    tags = {
        "study": spec.name,
        "git_sha": tracking.git_sha(),
        "study_file": inv.study_file,
        "dataset_fingerprint": inv.fingerprint,
        "profile": plan.profile.name,
    }
    if inv.resume:
        parent = json.loads(state_path.read_text())["parent_run_id"]
        tracking.reopen(inv.tracking_uri, parent)
        tracking.describe(inv.tracking_uri, parent, description(plan, inv))
    else:
        params = {
            "title": spec.title,
            "profile": plan.profile.name,
            "profile_reduces": plan.profile.reduces,
            "metric": spec.metric,
            "num_trials": plan.num_trials(),
            "seeds": ",".join(map(str, plan.seeds)),
            "workers_per_trial": plan.resources.workers,
            "gpus_per_worker": plan.resources.gpus_per_worker,
            "cpus_per_worker": plan.resources.cpus_per_worker,
            "dataset": str(inv.data_path),
            "notes": " | ".join(spec.notes) or "none",
            "log_models": spec.log_models,
        }
        parent = tracking.start_parent(inv.tracking_uri, exp_id, spec.name, tags, params)
        tracking.describe(inv.tracking_uri, parent, description(plan, inv))
        inv.exp_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "study": spec.name,
            "profile": plan.profile.name,
            "parent_run_id": parent,
            "experiment_id": exp_id,
            "tracking_uri": inv.tracking_uri,
            "data_path": str(inv.data_path),
            "fingerprint": inv.fingerprint,
            "options": inv.options,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    ctx = TrialContext(
        plan=plan,
        tracking_uri=inv.tracking_uri,
        experiment_id=exp_id,
        parent_run_id=parent,
        data_path=str(inv.data_path),
        fingerprint=inv.fingerprint,
        out_root=str(inv.exp_dir / "outputs"),
        train_storage=str(inv.exp_dir / "train"),
        tags=tags,
    )
    if plan.is_search:
        at_once = f"at most {parallel} at a time (TPE's limit; --max-concurrent sets it)"
    elif inv.max_concurrent:
        at_once = f"at most {inv.max_concurrent} at a time (--max-concurrent)"
    else:
        at_once = f"{parallel} fit the cluster now, more as nodes join"
    log.info(
        "study %s: %d trials, %s, parent MLflow run %s",
        spec.name,
        plan.num_trials(),
        at_once,
        parent,
    )
    if inv.resume:
        replay_trials(ctx.tracking_uri, ctx.out_root, "before the resumed trials start")
    status = "FAILED"
    try:
        grid = build_tuner(plan, ctx, inv, parallel).fit()
        frame = results_frame(plan, grid)
        frame.to_csv(inv.exp_dir / "results.csv", index=False)
        status = "FINISHED" if (frame["status"] == "ok").all() else "FAILED"
        kept = replay_trials(ctx.tracking_uri, ctx.out_root, "at the end of the study")
        _record(state_path, kept_writes=kept)
        if spec.log_models == "best":  # only now is each cell's best trial known
            for line in patiently(
                inv.tracking_uri,
                "logging the cells' best models",
                lambda: kept_models.log_cell_models(
                    inv.tracking_uri, exp_id, parent, spec.metric, spec.mode
                ),
            ):
                log.info("%s", line)
        patiently(
            inv.tracking_uri,
            "logging the study's summary",
            lambda: tracking.log_summary(inv.tracking_uri, parent, summary_metrics(frame)),
        )
    finally:
        patiently(
            inv.tracking_uri,
            "ending the study's parent run",
            lambda: tracking.finish(inv.tracking_uri, parent, status),
        )
    return frame


def _record(state_path: Path, **fields) -> None:
    """Add ``fields`` to the study's state file (study.json)."""
    state = json.loads(state_path.read_text())
    state.update(fields)
    files.write_text(state_path, json.dumps(state, indent=2) + "\n", "the study state")


def description(plan: Plan, inv: Invocation) -> str:
    """Return the parent run's description (markdown): the study's title, command and notes."""
    lines = [f"**{plan.spec.title}**", ""]
    if inv.command:
        verb = "resumed with" if inv.resume else "command"
        lines += [f"{verb}: `{inv.command}`", ""]
    lines.append(f"profile {plan.profile.name}: {plan.profile.reduces}")
    lines += [f"note: {n}" for n in plan.spec.notes]
    return "\n".join(lines)


def summary_metrics(frame: pd.DataFrame, metric: str = "test/f1_weighted") -> dict[str, float]:
    """Return the parent run's per-cell summary: finished seeds, mean and 95 % CI of ``metric``.

    Keys are ``summary/<cell>/test_f1_{n,mean,ci95_low,ci95_high}`` with the cell made a valid
    MLflow key (``pica lam=0.5`` → ``pica_lam_0.5``); the interval is Student t over the
    seeds, and a cell with one finished seed has no interval.
    """
    from uslearn.metrics import confidence_interval

    name = metric.removeprefix("test/").replace("_weighted", "").replace("/", "_")
    out: dict[str, float] = {}
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    for cell, group in ok.groupby("cell", sort=False):
        values = group[metric].dropna().to_numpy(dtype=float)
        prefix = f"summary/{tracking.metric_key(str(cell))}/test_{name}"
        out[f"{prefix}_n"] = float(len(values))
        if len(values) == 0:
            continue
        mean, low, high = confidence_interval(values, level=0.95, method="t")
        out[f"{prefix}_mean"] = mean
        if len(values) >= 2:
            out[f"{prefix}_ci95_low"], out[f"{prefix}_ci95_high"] = low, high
    return out


def results_frame(plan: Plan, grid) -> pd.DataFrame:
    """Return one row per trial: trial, cell, seed, status, the study metric and test metrics."""
    metric = plan.spec.metric
    rows = []
    for result in grid:
        config = dict(result.config or {})
        metrics = result.metrics or {}
        cell = config.pop("cell", plan.cells[0].name)
        row = {
            "trial": metrics.get("trial_id", ""),
            "cell": cell,
            "seed": config.pop("seed", plan.base.get("seed")),
            **{k: v for k, v in config.items()},
            "status": "error" if result.error else "ok",
            metric: metrics.get(metric, math.nan),
        }
        for key in ("test/f1_weighted", "test/precision_weighted", "test/recall_weighted"):
            row[key] = metrics.get(key, math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows)
    # The spec's cell order (lam 0.5, 1, 2, 5, 10), not the alphabet's (10 before 2).
    order = {cell.name: i for i, cell in enumerate(plan.cells)}
    frame["_order"] = frame["cell"].map(order)
    frame = frame.sort_values(["_order", "seed"], kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def summarise(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return, per cell in run order, the finished seeds and best / mean of ``metric`` and
    of the test weighted F1."""
    ok = frame[frame["status"] == "ok"]
    grouped = ok.groupby("cell", sort=False)
    table = pd.DataFrame({"seeds": grouped.size()})
    for column, label in ((metric, metric), ("test/f1_weighted", "test/f1_weighted")):
        if column in ok:
            table[f"{label} best"] = grouped[column].max()
            table[f"{label} mean"] = grouped[column].mean()
    return table
