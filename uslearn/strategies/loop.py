"""The shared training loop: one plain function every strategy runs through.

A strategy supplies its network heads, a stream of ready batches and ``step(model, batch) ->
(loss, logs)``; this loop owns everything else in plain sight: device and precision, DDP
wrapping, the optimiser, the gradient step, evaluation cadence, early stopping, the best /
last checkpoint, resume, NaN detection and reporting. Strategies never call ``backward``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from uslearn.errors import UserError
from uslearn.log import get_logger, progress
from uslearn.strategies.config import TrainConfig

log = get_logger(__name__)
Report = Callable[[dict[str, float], "str | None"], None]
LOG_EVERY = 10  # steps between host syncs: keeps `.item()` off the per-step path on a GPU


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss parts."""


@dataclass
class Context:
    """What a strategy needs to know about where it runs."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world_size: int
    generator: torch.Generator  # augmentation randomness, on ``device``
    amp_dtype: torch.dtype | None  # bf16 autocast on CUDA, None (fp32) on CPU

    @property
    def is_main(self) -> bool:
        """Return True on the process that writes files and logs (rank 0)."""
        return self.rank == 0


@dataclass
class LoopState:
    """Counters that a checkpoint must restore for a resumed run to match an uninterrupted one."""

    step: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    evals_since_gain: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Strategy(Protocol):
    """What ``train`` needs from a strategy (see clustering.py, supervised.py, fixmatch.py)."""

    heads: dict[str, int]
    total_steps: int
    eval_every: int
    keep: str  # "best": keep the best validation checkpoint; "last": the last one (clustering)
    early_stopping: bool

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]: ...

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def validate(self, model: torch.nn.Module) -> float: ...


def make_context(cfg: TrainConfig) -> Context:
    """Return the run's context: device, rank, seeded generators and precision."""
    rank, world = (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device in ("auto", "cuda"):
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but CUDA is not available; use --device cpu")
        # One GPU per DDP rank on a node: rank i of a node takes cuda:i.
        device = (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(
                f"device={cfg.device} was asked for but CUDA is not available; use --device cpu"
            )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = (
        cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    )
    # Same seed on every rank: model init must agree before DDP's broadcast; augmentation
    # streams differ by rank so ranks do not draw identical crops.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    return Context(
        cfg, device, rank, world, generator, torch.bfloat16 if precision == "bf16" else None
    )


def _save_checkpoint(path: Path, model, optimizer, state: LoopState, ctx: Context) -> None:
    """Write model, optimiser, loop state and RNG states atomically to ``path``."""
    payload = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "generator": ctx.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": asdict(ctx.cfg),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the network under a DDP or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _reduce_mean(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Return ``values`` averaged over ranks (identity without DDP)."""
    if ctx.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def _from_rank0(value: float, ctx: Context) -> float:
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
    ctx: Context,
    out_dir: Path,
    report: Report | None = None,
    resume_from: str | Path | None = None,
) -> tuple[torch.nn.Module, LoopState]:
    """Train ``model`` with ``strategy`` to the end; return the kept model and the loop state.

    The kept model is the best validation checkpoint (``strategy.keep == "best"``) or the
    last one (``"last"``), loaded back into ``model``. ``report(metrics, checkpoint_dir)`` is
    called at every evaluation on every rank; checkpoint_dir is None on ranks other than 0.
    """
    cfg = ctx.cfg
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # paper: Adam, lr 1e-4 fixed
    state = LoopState()
    if resume_from is not None:
        state = _resume(Path(resume_from), model, optimizer, ctx)
        previous_best = Path(resume_from) / "best.pt"
        if (
            ctx.is_main
            and previous_best.is_file()
            and previous_best.resolve() != (out_dir / "checkpoint" / "best.pt").resolve()
        ):
            (out_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            shutil.copy2(previous_best, out_dir / "checkpoint" / "best.pt")
        log.info("resumed from %s at step %d", resume_from, state.step)
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)

    # best.pt lives beside checkpoint.pt so that a run resumed elsewhere (a restored Tune
    # trial) still has the best weights seen before the interruption.
    ckpt_dir = out_dir / "checkpoint"
    best_path = ckpt_dir / "best.pt"
    pending: list[dict[str, torch.Tensor]] = []
    bar = (
        progress(total=strategy.total_steps, desc=cfg.strategy, unit="step")
        if ctx.is_main
        else None
    )
    if bar is not None:
        bar.update(state.step)
    images_seen, tick = 0, time.perf_counter()
    net.train()
    for batch in strategy.batches(state.step):
        if state.step >= strategy.total_steps:
            break
        with torch.autocast(
            ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None
        ):
            loss, logs = strategy.step(net, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        images_seen += int(batch["n_images"])
        pending.append(
            {"loss": loss.detach().float(), **{k: v.detach().float() for k, v in logs.items()}}
        )
        if bar is not None:
            bar.update(1)
        evaluate_now = state.step % strategy.eval_every == 0 or state.step == strategy.total_steps
        if len(pending) < LOG_EVERY and not evaluate_now:
            continue
        train_logs = _flush(pending, state.step, ctx)
        pending = []
        if not evaluate_now:
            continue
        elapsed = time.perf_counter() - tick
        metrics = {
            **train_logs,
            "train/img_per_s": images_seen * ctx.world_size / max(elapsed, 1e-9),
        }
        net.eval()
        metrics["val/f1_weighted"] = _from_rank0(strategy.validate(_unwrap(net)), ctx)
        net.train()
        metrics.update(
            step=float(state.step),
            epoch=state.step / max(getattr(strategy, "steps_per_epoch", 1), 1),
        )
        gained = metrics["val/f1_weighted"] > state.best_score
        if gained:
            state.best_score, state.best_step, state.evals_since_gain = (
                metrics["val/f1_weighted"],
                state.step,
                0,
            )
        else:
            state.evals_since_gain += 1
        state.history.append(metrics)
        stop = strategy.early_stopping and state.evals_since_gain >= cfg.patience
        if ctx.is_main:
            if gained or strategy.keep == "last":
                best_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {"model": _unwrap(net).state_dict(), "config": asdict(cfg), "step": state.step},
                    best_path,
                )
            _save_checkpoint(ckpt_dir / "checkpoint.pt", net, optimizer, state, ctx)
        if report is not None:
            report(
                {**metrics, "best_step": float(state.best_step)},
                str(ckpt_dir) if ctx.is_main else None,
            )
        log.debug(
            "step %d %s", state.step, json.dumps({k: round(v, 4) for k, v in metrics.items()})
        )
        images_seen, tick = 0, time.perf_counter()
        if stop:
            log.info(
                "early stopping at step %d: no validation gain for %d evaluations",
                state.step,
                cfg.patience,
            )
            break
    if bar is not None:
        bar.close()
    if ctx.is_main:
        if not best_path.exists():
            raise UserError(
                f"training ended before the first evaluation (step {state.step}); no checkpoint at {best_path}"
            )
        model.load_state_dict(
            torch.load(best_path, map_location="cpu", weights_only=False)["model"]
        )
        shutil.copy2(best_path, out_dir / "best.pt")
    if ctx.world_size > 1:
        # Other ranks may run on other nodes: they get the kept weights from rank 0, not its disk.
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return model, state


def _flush(pending: list[dict[str, torch.Tensor]], step: int, ctx: Context) -> dict[str, float]:
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


def _resume(path: Path, model, optimizer, ctx: Context) -> LoopState:
    """Load a checkpoint written by ``_save_checkpoint`` (a file or its directory)."""
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file}: no checkpoint to resume from")
    payload = torch.load(file, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    ctx.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return LoopState(**payload["state"])
