"""One trial: the Tune function that runs one strategy and logs it as an MLflow child run.

Three layers, as Ray Train V2 wants them (docs/RAY_MLFLOW.md): ``tune_trial`` is the Tune trainable.
A single-worker CPU trial runs the strategy right there (no worker group to start); a GPU or
DDP trial builds a ``TorchTrainer`` whose workers run ``train_worker``, named after the Tune
trial id so that a retried trial finds its own Train run and checkpoints again. In both cases
``run_logged`` runs the strategy through ``tracking.tracked_run`` and only rank 0 talks to MLflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uslearn.log import get_logger
from uslearn.study.memory import release_freed_memory
from uslearn.study.spec import Plan

if TYPE_CHECKING:  # the loop imports torch; the study driver process never needs it
    from uslearn.strategies.loop import OnEvaluation

log = get_logger(__name__)
DDP_BACKEND_ENV = "USLEARN_DDP_BACKEND"  # read by the trial's driver on the head node


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one study invocation shares (bound with ``tune.with_parameters``).

    Attributes:
        plan: the resolved study.
        tracking_uri / experiment_id / parent_run_id: where the child runs go.
        data_path: the dataset directory.
        fingerprint: the dataset's fingerprint (a param and a tag of every run).
        out_root: trial output folders go under it (``<out_root>/<trial name>``).
        train_storage: storage path of the Ray Train runs of GPU/DDP trials.
        tags: tags every child run gets (``study``, ``git_sha``, ``study_file``, ``profile``).
    """

    plan: Plan
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_path: str
    fingerprint: str
    out_root: str
    train_storage: str
    tags: Mapping[str, str]


def trial_name(plan: Plan, tune_config: Mapping[str, Any], trial_id: str) -> str:
    """Return a readable, filesystem-safe trial name: ``<cell>_seed=<s>`` or the trial id."""
    if "cell" in tune_config:
        raw = f"{tune_config['cell']}_seed={tune_config['seed']}"
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", raw)
    return f"trial_{trial_id}"


def run_name(plan: Plan, tune_config: Mapping[str, Any], trial_id: str) -> str:
    """Return the MLflow child run name: ``"<cell> seed=<s>"`` or ``"<study> <trial id>"``."""
    if "cell" in tune_config:
        return f"{tune_config['cell']} seed={tune_config['seed']}"
    return f"{plan.spec.name} {trial_id}"


def for_tune(metrics: Mapping[str, float]) -> dict[str, float]:
    """Return ``metrics`` without the per-class ones (``test/f1/liver``...).

    MLflow gets every metric; Tune's console tables and result files keep to the summary
    ones, or each finished trial prints 28 per-class rows.
    """
    return {k: v for k, v in metrics.items() if k.count("/") < 2}


POINTER = "checkpoint_pointer.json"


def pointer_checkpoint(checkpoint_dir: str) -> str:
    """Return a directory holding only the path of ``checkpoint_dir``, for Tune to persist.

    Tune copies whatever directory it is given into its storage at every report: the loop's
    checkpoint (weights + Adam state + best weights, ~180 MB for ResNet18) would be copied
    at each evaluation and kept twice per trial. The run directory already lives on the
    study's storage (shared on a cluster), so Tune keeps a pointer to it instead.
    """
    holder = Path(checkpoint_dir).parent / "tune_checkpoint"
    holder.mkdir(parents=True, exist_ok=True)
    tmp = holder / f"{POINTER}.tmp"
    tmp.write_text(json.dumps({"checkpoint_dir": str(Path(checkpoint_dir).resolve())}))
    os.replace(tmp, holder / POINTER)
    return str(holder)


def follow_pointer(resume_dir: str | None) -> str | None:
    """Return the checkpoint directory a restored Tune checkpoint points to (or itself)."""
    if resume_dir is None or not (Path(resume_dir) / POINTER).is_file():
        return resume_dir
    return json.loads((Path(resume_dir) / POINTER).read_text())["checkpoint_dir"]


def run_logged(
    ctx: TrialContext,
    tune_config: Mapping[str, Any],
    trial_id: str,
    report: OnEvaluation,
    resume_dir: str | None,
    rank: int = 0,
    node_tags: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Run one strategy to the end, logging to the child run on rank 0; return final metrics.

    Args:
        ctx: the study's shared context.
        tune_config: the Tune trial config (``{"cell", "seed"}`` or the sampled values).
        trial_id: the Tune trial id (names the child run's ``trial_id`` tag).
        report: forwards ``(metrics, checkpoint_dir)`` to Tune or Train.
        resume_dir: directory of the restored checkpoint, or None for a fresh start.
        rank: DDP rank of this process (0 for in-process trials).
        node_tags: tags naming the Ray node of every rank (see ``worker_node_tags``).
    """
    from uslearn.data.staging import staged_dataset
    from uslearn.study import kept_models
    from uslearn.study.active import active_params, split_active
    from uslearn.study.tracking import TrackedRun, run_params, tracked_run

    flat, active = split_active(ctx.plan.trial_config(tune_config))
    out_dir = Path(ctx.out_root) / trial_name(ctx.plan, tune_config, trial_id)
    # The trial's journal (its folder, on the study's storage) says whether it already
    # finished: a driver killed between a trial's end and Tune's next snapshot leaves it
    # unfinished for Tune. Rank 0 decides for every rank (the folder may not be shared).
    done = _agreed(finished_trial(ctx.tracking_uri, out_dir) if rank == 0 else None)
    if done is not None:
        log.info("trial %s finished before the study was interrupted; not run again", trial_id)
        report(for_tune(done), None)
        return done
    # A node-local copy of the image store when $USLEARN_STAGE_DIR asks for one (before the
    # child run opens: a trial that cannot stage fails without a run left RUNNING).
    data_path = staged_dataset(ctx.data_path, ctx.fingerprint)
    child = None
    policy = ctx.plan.spec.log_models
    if rank == 0:
        cell = tune_config.get("cell", ctx.plan.cells[0].name)
        tags = {**ctx.tags, "cell": cell, "dataset_fingerprint": ctx.fingerprint}
        child = TrackedRun(
            ctx.tracking_uri,
            ctx.experiment_id,
            run_name(ctx.plan, tune_config, trial_id),
            tags,
            parent_id=ctx.parent_run_id,
            trial_id=trial_id,
            run_dir=out_dir,
        )
        child.keep_model = policy == "all"
        run_tags = {
            "out_dir": str(out_dir),
            kept_models.TAG: kept_models.trial_tag(policy),
            **(node_tags or {}),
        }
        if resume_dir is not None:
            # A retried trial (its process or node died) or a resumed study: say from where.
            run_tags["resumed_from"] = str(follow_pointer(resume_dir))
        extra = active_params(active) if active is not None else {}
        params = run_params(flat, ctx.fingerprint, profile=ctx.plan.profile.name, **extra)
        child.log_params(params, run_tags)

    def on_evaluation(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        report(for_tune(metrics), pointer_checkpoint(checkpoint_dir) if checkpoint_dir else None)

    # MLflow gets the final metrics before the report below: a scheduler may stop the trial there.
    if active is not None:  # an active-learning trial: a sequence of rounds (study/rounds.py)
        final = tracked_rounds(child, flat, active, data_path, out_dir, on_evaluation)
    else:
        final = tracked_run(
            child, flat, data_path, out_dir, on_evaluation, follow_pointer(resume_dir)
        )
    kept = 0
    if child is not None:
        kept = child.backlog
        # A finished trial is never resumed: its checkpoint goes (a ResNet18 trial would
        # otherwise leave ~270 MB here). Its kept weights go too once they are in MLflow (its
        # model); a trial that did not log its model keeps best.pt, from which the study's end
        # (policy best) or a later `uslearn register` logs it (kept_models), and so does one
        # whose model is still in its journal (the server was away).
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
        shutil.rmtree(out_dir / "tune_checkpoint", ignore_errors=True)
        if policy == "all" and not kept:
            (out_dir / "best.pt").unlink(missing_ok=True)
    # The last report carries the test metrics, so Tune's results (and the end-of-study
    # summary) hold them too, not only MLflow; ``tracking/kept`` counts unsent writes.
    report({**for_tune(final), KEPT_METRIC: float(kept)}, None)
    return final


KEPT_METRIC = "tracking/kept"


def finished_trial(tracking_uri: str, out_dir: Path) -> dict[str, float] | None:
    """Return a trial's final metrics if its journal says it finished (sending what it kept).

    Args:
        tracking_uri: where the trial's run lives.
        out_dir: the trial's folder.
    """
    from uslearn.study.delivery import replay
    from uslearn.study.journal import Journal

    journal = Journal(out_dir)
    if journal.end_status != "FINISHED":
        return None
    if journal.pending():
        replay(tracking_uri, out_dir)
    return journal.final_metrics()


def _agreed(value: Any) -> Any:
    """Return rank 0's ``value`` on every rank of the trial's process group (as is without one)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return value
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def tracked_rounds(child, flat, active, data_path, out_dir, report) -> dict[str, float]:
    """Run an active-learning trial's rounds, logging to ``child``; end the run like
    ``tracking.tracked_run`` does (FINISHED with the final metrics, FAILED, KILLED)."""
    from uslearn.study.rounds import STATE, run_rounds

    try:
        final = run_rounds(child, flat, active, data_path, out_dir, report)
    except BaseException as err:
        if child is not None:
            child.finish("KILLED" if isinstance(err, SystemExit) else "FAILED")
        raise
    if child is not None:
        child.log_metrics(final, final=True)
        child.log_files(out_dir, STATE)
        child.finish("FINISHED")
    return final


def tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: run the trial in this process or through a TorchTrainer."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if ctx.plan.resources.mode == "train":
        _fit_trainer(config, ctx, trial_id)
        return

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    node = {"node_id/rank0": ray.get_runtime_context().get_node_id()}
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
            run_logged(ctx, config, trial_id, report, resume_dir, node_tags=node)
    finally:
        # This process runs the next trial too: give back what this one freed (memory.py).
        release_freed_memory()


def worker_node_tags(rank: int) -> dict[str, str]:
    """Return ``{"node_id/rank<r>": <Ray node id>}`` for every rank of this Train worker group.

    A collective over the trial's process group: every rank must call it.
    """
    import ray
    import torch.distributed as dist

    own = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return {f"node_id/rank{rank}": own}
    every: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, own)
    tags = {f"node_id/rank{r}": str(node) for r, node in enumerate(every)}
    tags["worker_nodes"] = str(len(set(every)))
    return tags


def train_worker(loop_config: dict[str, Any]) -> None:
    """A Ray Train worker of a GPU/DDP trial: the same run, reporting through ``ray.train``."""
    import ray.train

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    rank = ray.train.get_context().get_world_rank()
    nodes = worker_node_tags(rank)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
        run_logged(
            loop_config["ctx"],
            loop_config["tune_config"],
            loop_config["trial_id"],
            report,
            resume_dir,
            rank=rank,
            node_tags=nodes,
        )


def _fit_trainer(config: dict[str, Any], ctx: TrialContext, trial_id: str) -> None:
    """Run the trial as a Ray Train job named after the trial id (so a retry resumes it)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = ctx.plan.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"ctx": ctx, "tune_config": dict(config), "trial_id": trial_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
            placement_strategy=res.placement,
        ),
        # None: NCCL with GPUs, gloo without. A cluster whose GPUs are scheduling resources
        # only (the local rehearsal's fake GPUs have no CUDA) sets USLEARN_DDP_BACKEND=gloo.
        torch_config=TorchConfig(backend=os.environ.get(DDP_BACKEND_ENV) or None),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=ctx.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=ctx.plan.spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        trainer.fit()
    except SystemExit:
        # Stopped by the Tune scheduler: the workers are gone, so close rank 0's run here,
        # through the trial's journal.
        from uslearn.study.tracking import end_journalled_run

        out_dir = Path(ctx.out_root) / trial_name(ctx.plan, config, trial_id)
        end_journalled_run(
            ctx.tracking_uri, out_dir, "KILLED", {"stopped_early": "by the Tune scheduler"}
        )
        raise
