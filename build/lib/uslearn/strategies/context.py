"""Where one training run runs: device, DDP rank, precision and seeded random generators.

``make_context`` settles them once from the run's ``TrainConfig`` and the process it runs in
(a plain process, one of N DDP ranks, a Ray Train worker); strategies and the loop read the
``RunContext`` instead of asking torch themselves.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from uslearn.errors import UserError
from uslearn.strategies.config import TrainConfig


@dataclass
class RunContext:
    """Where one training run runs: what a strategy needs to know besides its config."""

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


def make_context(cfg: TrainConfig) -> RunContext:
    """Return the run's context: device, rank, seeded generators and precision."""
    rank, world = (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )
    # One GPU per DDP rank on a node: rank i of a node takes cuda:i.
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Same seed on every rank: model init must agree before DDP's broadcast; augmentation
    # streams differ by rank so ranks do not draw identical crops.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    return RunContext(cfg, device, rank, world, generator, autocast_dtype(cfg.precision, device))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Return the torch device for ``auto`` (``cuda:<local_rank>`` when CUDA is there, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:i``.

    Raises:
        UserError: a CUDA device was asked for but CUDA is not available.
    """
    if name in ("auto", "cuda"):
        if name == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but CUDA is not available; use --device cpu")
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but CUDA is not available; use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return bf16 for ``bf16`` (and for ``auto`` on CUDA), None (fp32) otherwise."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None
