"""The shared training loop every strategy runs through, in four plain steps.

A strategy supplies its network heads, a stream of ready batches and ``step(model, batch) ->
(loss, logs)`` (the ``Strategy`` protocol lists all it supplies); the loop owns everything else
in plain sight. ``train`` reads top to bottom like torchvision's reference loop: ``prepare``
(device and precision, Adam, resume, DDP / ``torch.compile`` wrapping), then ``train_step`` per
batch (forward through ``strategy.step``, backward, optimiser step), every ``eval_every`` steps
``evaluate_and_checkpoint`` (validation, the best / last weights, the resume checkpoint, the
report; it returns whether to stop early) and at the end ``load_kept`` (the kept weights back
into the model on every rank). NaN detection costs one host sync per ``LOG_EVERY`` steps.
Strategies never call ``backward``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from uslearn import files, models
from uslearn.errors import UserError
from uslearn.log import get_logger, progress, progress_enabled, under_ray
from uslearn.strategies import checkpoint
from uslearn.strategies.checkpoint import LoopState
from uslearn.strategies.context import RunContext

log = get_logger(__name__)
# Called at every evaluation on every rank as (metrics, checkpoint dir on rank 0, else None).
OnEvaluation = Callable[[dict[str, float], "str | None"], None]
LOG_EVERY = 10  # steps between host syncs: keeps `.item()` off the per-step path on a GPU
PROGRESS_EVERY_S = 10.0  # seconds between the step/loss lines of a run without a progress bar


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss parts."""


class Strategy(Protocol):
    """Everything the loop and ``runner.run`` read from a strategy (e.g. supervised.py).

    Attributes:
        heads: head name -> outputs; the network is built with exactly these heads.
        steps_per_epoch: steps of one pass over the pool that paces the run (``epoch`` metric).
        total_steps: steps of the whole run.
        eval_every: steps between evaluations (the last step is always evaluated).
        keep: ``"best"`` validation checkpoint or ``"last"`` one (clustering: the last epoch).
        patience: stop after this many evaluations without validation gain; None = never.
            With ``eval_every`` in steps this is a patience in optimiser steps.
        min_steps: never stop early before this step (0 = no minimum).
        ema_decay: validate, keep and test an exponential moving average of the weights
            with this decay instead of the weights themselves (0 = off).
    """

    heads: dict[str, int]
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    keep: str
    patience: int | None
    min_steps: int
    ema_decay: float

    def batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        """Yield ready batches on the device from global step ``start_step`` on, forever.

        Besides what ``step`` reads, each batch holds ``n_images``: the images that go through
        the network in this step, views counted (``train/img_per_s`` counts them).
        """
        ...

    def step(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the scalar loss of ``batch`` and its parts to log (tensors, not floats)."""
        ...

    def validate(self, model: torch.nn.Module) -> float:
        """Return the model-selection score: weighted F1 on validation."""
        ...

    def finish(
        self, model: torch.nn.Module, out_dir: Path
    ) -> tuple[np.ndarray, pd.DataFrame, dict[str, float]]:
        """Return (validation-fitted thresholds, test report, extra test metrics) of the kept model."""
        ...


@dataclass
class Training:
    """What the loop's steps share during one run.

    Attributes:
        model: the bare network; ``load_kept`` loads the kept weights into it.
        net: what the steps call: ``model`` under DDP and/or ``torch.compile``.
        optimizer: Adam over ``model``'s parameters.
        state: the counters a checkpoint restores.
        ckpt_dir: ``<out_dir>/checkpoint`` (``checkpoint.pt`` to resume, ``best.pt`` kept).
        record: the run's resolved config (with the dataset fingerprint), stored in every
            checkpoint: a resume compares it with its own.
        ema: the moving average of ``model``'s weights that is evaluated and kept, or None.
        images_seen, tick: images trained on since the last evaluation, and when it ended.
    """

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: LoopState
    ckpt_dir: Path
    record: dict[str, Any]
    ema: AveragedModel | None = None
    images_seen: int = 0
    tick: float = field(default_factory=time.perf_counter)

    def evaluated(self) -> torch.nn.Module:
        """Return the network that is validated and kept: the EMA weights, or the model's."""
        return self.ema.module if self.ema is not None else _unwrap(self.net)


def _save_checkpoints(training: Training, ctx: RunContext, best: bool) -> None:
    """Write ``checkpoint.pt`` (and ``best.pt`` when ``best``), both or neither (checkpoint.py).

    ``best.pt`` holds the evaluated weights: the weight average's when there is one.
    """
    payload = {
        "model": _unwrap(training.net).state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "state": asdict(training.state),
        "generator": ctx.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": training.record,
    }
    if training.ema is not None:
        payload["ema"] = training.ema.state_dict()
    kept = {
        "model": training.evaluated().state_dict(),
        "config": training.record,
        "step": training.state.step,
    }
    checkpoint.save(training.ckpt_dir, payload, kept if best else None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the network under a DDP or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _reduce_mean(values: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    """Return ``values`` averaged over ranks (identity without DDP)."""
    if ctx.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def _from_rank0(value: float, ctx: RunContext) -> float:
    """Return rank 0's ``value`` on every rank.

    BatchNorm running statistics differ between DDP ranks after their last local batch, so
    their validation scores differ slightly; early stopping and the best checkpoint must
    follow one of them, or ranks would disagree (and deadlock).
    """
    if ctx.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def train(
    strategy: Strategy,
    model: torch.nn.Module,
    ctx: RunContext,
    out_dir: Path,
    report: OnEvaluation | None = None,
    resume_from: str | Path | None = None,
    record: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, LoopState]:
    """Train ``model`` with ``strategy`` to the end; return the kept model and the loop state.

    The kept model is the best validation checkpoint (``strategy.keep == "best"``) or the
    last one (``"last"``), loaded back into ``model``. ``report(metrics, checkpoint_dir)`` is
    called at every evaluation on every rank; checkpoint_dir is None on ranks other than 0.
    ``record`` (the resolved config; default: ``ctx.cfg``) goes into every checkpoint.

    Raises:
        UserError: ``resume_from`` is no readable checkpoint, was written with another config
            (only the length may differ) or lies past this run's end.
    """
    training = prepare(model, ctx, out_dir, resume_from, record, ema_decay=strategy.ema_decay)
    state = training.state
    if state.step > strategy.total_steps:
        raise UserError(
            f"cannot resume: the checkpoint is at step {state.step} (epoch "
            f"{state.step / strategy.steps_per_epoch:g}), past the end of this run "
            f"({strategy.total_steps} step(s)); give a length that reaches it"
        )
    bar = (
        progress(total=strategy.total_steps, desc=ctx.cfg.strategy, unit="step")
        if ctx.is_main
        else None
    )
    if bar is not None:
        bar.update(state.step)
    # Without a bar (a log file, no TTY) and outside Ray (Tune reports there): a line of
    # step and loss at a steady cadence, between the evaluations' lines.
    lines = ctx.is_main and not progress_enabled() and not under_ray()
    last_line = time.perf_counter()
    pending: list[dict[str, torch.Tensor]] = []
    for batch in strategy.batches(state.step):
        if state.step >= strategy.total_steps:
            break
        pending.append(train_step(training, strategy, batch, ctx))
        if bar is not None:
            bar.update(1)
        evaluate_now = state.step % strategy.eval_every == 0 or state.step == strategy.total_steps
        due = lines and time.perf_counter() - last_line >= PROGRESS_EVERY_S
        if len(pending) < LOG_EVERY and not evaluate_now and not due:
            continue
        train_logs = _flush(pending, state.step, ctx)
        pending = []
        if due:
            last_line = time.perf_counter()
            log.info(
                "step %d/%d  loss %.4f",
                state.step,
                strategy.total_steps,
                train_logs.get("train/loss", float("nan")),
            )
        if evaluate_now and evaluate_and_checkpoint(training, strategy, ctx, train_logs, report):
            break
    if bar is not None:
        bar.close()
    return load_kept(training, ctx, out_dir), state


def prepare(
    model: torch.nn.Module,
    ctx: RunContext,
    out_dir: Path,
    resume_from: str | Path | None = None,
    record: dict[str, Any] | None = None,
    ema_decay: float = 0.0,
) -> Training:
    """Return the run's ``Training``: model on the device, Adam, EMA, resumed state, DDP / compile."""
    record = dict(record) if record is not None else asdict(ctx.cfg)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.cfg.lr)  # paper: Adam, lr 1e-4 fixed
    # As torchvision's reference recipes: BatchNorm statistics are averaged with the weights.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        if ema_decay > 0
        else None
    )
    # best.pt lives beside checkpoint.pt so that a run resumed elsewhere (a restored Tune
    # trial) still has the best weights seen before the interruption.
    ckpt_dir = out_dir / "checkpoint"
    state = LoopState()
    if resume_from is not None:
        state = checkpoint.restore(Path(resume_from), model, optimizer, ctx, ckpt_dir, record, ema)
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if ctx.cfg.compile:
        net = torch.compile(net)
    net.train()
    return Training(model, net, optimizer, state, ckpt_dir, record, ema)


def train_step(
    training: Training, strategy: Strategy, batch: dict[str, Any], ctx: RunContext
) -> dict[str, torch.Tensor]:
    """Run one optimisation step on ``batch``; return its detached loss and logs (no host sync)."""
    with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None):
        loss, logs = strategy.step(training.net, batch)
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    training.optimizer.step()
    if training.ema is not None:
        training.ema.update_parameters(training.model)
    training.state.step += 1
    training.images_seen += int(batch["n_images"])
    return {"loss": loss.detach().float(), **{k: v.detach().float() for k, v in logs.items()}}


def evaluate_and_checkpoint(
    training: Training,
    strategy: Strategy,
    ctx: RunContext,
    train_logs: dict[str, float],
    report: OnEvaluation | None = None,
) -> bool:
    """Validate, keep the best (or last) weights, save the resume checkpoint and report.

    Returns:
        True when the run should stop early: ``strategy.patience`` evaluations without gain,
        and at least ``strategy.min_steps`` steps done.
    """
    state, net, evaluated = training.state, training.net, training.evaluated()
    elapsed = time.perf_counter() - training.tick
    metrics = {
        **train_logs,
        "train/img_per_s": training.images_seen * ctx.world_size / max(elapsed, 1e-9),
    }
    net.eval()
    evaluated.eval()
    metrics["val/f1_weighted"] = _from_rank0(strategy.validate(evaluated), ctx)
    net.train()
    metrics.update(step=float(state.step), epoch=state.step / strategy.steps_per_epoch)
    gained = metrics["val/f1_weighted"] > state.best_score
    if gained:
        state.best_score, state.best_step = metrics["val/f1_weighted"], state.step
        state.evals_since_gain = 0
    else:
        state.evals_since_gain += 1
    state.history.append(metrics)
    if ctx.is_main:
        _save_checkpoints(training, ctx, best=gained or strategy.keep == "last")
    if report is not None:
        checkpoint_dir = str(training.ckpt_dir) if ctx.is_main else None
        report({**metrics, "best_step": float(state.best_step)}, checkpoint_dir)
    log.debug("step %d %s", state.step, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    training.images_seen, training.tick = 0, time.perf_counter()
    stop = (
        strategy.patience is not None
        and state.evals_since_gain >= strategy.patience
        and state.step >= strategy.min_steps
    )
    if stop:
        log.info(
            "early stopping at step %d: no validation gain for %d evaluations (best step %d)",
            state.step,
            state.evals_since_gain,
            state.best_step,
        )
    return stop


def load_kept(training: Training, ctx: RunContext, out_dir: Path) -> torch.nn.Module:
    """Return the model holding the kept weights on every rank; copy them to ``out_dir/best.pt``."""
    model, best_path = training.model, training.ckpt_dir / "best.pt"
    if ctx.is_main:
        if not best_path.exists():
            raise UserError(
                f"training ended before the first evaluation (step {training.state.step}); "
                f"no checkpoint at {best_path}"
            )
        model.load_state_dict(models.load_file(best_path)["model"])
        files.copy_file(best_path, out_dir / "best.pt", "the best weights")
    if ctx.world_size > 1:
        # Other ranks may run on other nodes: they get the kept weights from rank 0, not its disk.
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return model


def _flush(pending: list[dict[str, torch.Tensor]], step: int, ctx: RunContext) -> dict[str, float]:
    """Return the mean of the pending step logs as ``train/<name>`` floats; raise on NaN/inf.

    One host sync per LOG_EVERY steps instead of one per step.
    """
    names = list(pending[0])
    stacked = torch.stack([torch.stack([p[n] for n in names]) for p in pending]).cpu()  # (S, L)
    finite = torch.isfinite(stacked).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        parts = ", ".join(f"{n}={stacked[bad, i].item():.4g}" for i, n in enumerate(names))
        raise NonFiniteLossError(
            f"non-finite loss at step {step - len(pending) + bad + 1}: {parts}"
        )
    means = _reduce_mean(stacked.mean(dim=0).to(ctx.device), ctx).cpu()
    return {f"train/{n}": float(v) for n, v in zip(names, means)}
