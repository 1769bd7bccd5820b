"""The files a run keeps in ``<out>/checkpoint/``, and what a resume may load from them.

``checkpoint.pt`` holds what a resumed run needs (weights, Adam, the loop's counters, the
random states) and the run's resolved config; ``best.pt`` the kept weights with the same
config. Both hold only tensors, numbers, strings and containers, so they load with
``torch.load(weights_only=True)``, and ``save`` writes them as a pair, atomically.
``read_for_resume`` refuses a file that is no such checkpoint, or whose config differs from
the resuming run's but for its length (docs/RUNS.md); ``restore`` loads one into the resuming
run and returns its ``LoopState``, the counters that make a resumed run match an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from uslearn import files, models
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.strategies.context import RunContext
from uslearn.strategies.registry import entry, resume_conflicts

log = get_logger(__name__)

# What ``checkpoint.pt`` holds besides the run's config; a file without them is no checkpoint.
CHECKPOINT_KEYS = ("model", "optimizer", "state", "generator", "torch_rng")


@dataclass
class LoopState:
    """Counters that a checkpoint must restore for a resumed run to match an uninterrupted one."""

    step: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    evals_since_gain: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def save(ckpt_dir: Path, payload: dict[str, Any], kept: dict[str, Any] | None = None) -> None:
    """Write ``checkpoint.pt`` (``payload``) and ``best.pt`` (``kept``, when given): both or neither.

    Both files are written and fsynced beside their targets before either is renamed into
    place, so a full disk leaves the previous pair as it was (``EnvError`` naming the file),
    never a truncated file or a new best.pt beside an old checkpoint.pt.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as renames:
        if kept is not None:
            _write(kept, renames, ckpt_dir / "best.pt", "the best weights")
        _write(payload, renames, ckpt_dir / "checkpoint.pt", "the checkpoint")


def _write(obj: dict, renames: contextlib.ExitStack, path: Path, what: str) -> None:
    """Write ``obj`` to a temporary file that ``renames`` puts at ``path`` when it closes."""
    handle = renames.enter_context(files.replacing(path, what))
    torch.save(obj, handle)
    handle.sync()  # a full disk shows by now, before either file of the pair is renamed


def read_for_resume(path: Path, record: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Return (file, contents) of the checkpoint a run resumes from (a file or its folder).

    Args:
        path: ``checkpoint.pt`` or the folder holding it.
        record: the resuming run's resolved config (with ``dataset_fingerprint``); the
            checkpoint's must equal it but for the length (``registry.resume_conflicts``).

    Raises:
        UserError: one line naming the file: missing, unreadable, not a training checkpoint,
            or written with another config (naming each key).
    """
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file}: no checkpoint to resume from")
    payload = models.load_file(file)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise UserError(f"{file}: not a uslearn training checkpoint (it has no {missing})")
    saved = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    conflicts = resume_conflicts(saved, record)
    if conflicts:
        unit = entry(record["strategy"]).unit
        raise UserError(
            f"cannot resume from {file}: this run asks for {', '.join(conflicts)}; only the "
            f"length ({unit}) may change: give the checkpoint's values, or train into a new "
            "--out"
        )
    return file, payload


def restore(
    path: Path,
    model,
    optimizer,
    ctx: RunContext,
    ckpt_dir: Path,
    record: dict[str, Any],
    ema: AveragedModel | None = None,
) -> LoopState:
    """Load the checkpoint at ``path`` (a file or its folder) into the run; return its counters.

    Its config is checked first (``read_for_resume``: the same as ``record`` but for the
    length). The best weights saved beside it are copied into this run's ``ckpt_dir``
    (rank 0), so a run resumed into another folder still keeps the best model seen before the
    interruption.

    Raises:
        UserError: one line naming the file: missing, unreadable, not a training checkpoint,
            written with another config, or holding weights that do not fit the network.
    """
    file, payload = read_for_resume(path, record)
    if ema is not None and "ema" not in payload:
        raise UserError(f"{file}: written without a weight average; resume with ema_decay=0")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if ema is not None:
            ema.load_state_dict(payload["ema"])
        ctx.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        state = LoopState(**payload["state"])
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{file}: does not fit this run's network ({reason})") from None
    previous_best = file.parent / "best.pt"
    if (
        ctx.is_main
        and previous_best.is_file()
        and previous_best.resolve() != (ckpt_dir / "best.pt").resolve()
    ):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        files.copy_file(previous_best, ckpt_dir / "best.pt", "the best weights")
    log.info("resumed from %s at step %d", path, state.step)
    return state
