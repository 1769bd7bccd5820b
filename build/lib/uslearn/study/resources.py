"""What one trial asks Ray for, how many trials fit at once, and how long a study should take.

Pure functions of numbers: the runner feeds them ``ray.cluster_resources()`` and the dataset's
split counts; ``--dry-run`` prints what they return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from uslearn.config import ConfigError
from uslearn.strategies.registry import Draw, entry, param_default

# Seconds a trial spends before its first step: a Ray Train worker group takes 20-25 s to start
# on a 2-core machine (docs/RAY_MLFLOW.md); an in-process trial only builds the model and the data.
STARTUP_S = {"train": 25.0, "in-process": 4.0}

# Training throughput of ONE trial (images through forward+backward per second), measured.
# cpu, 32 px: median ``train/img_per_s`` of the 60 evaluations of the cpu-demo
# lambda_sensitivity study (PICA/LSD, two trials sharing 2 busy cores, 1 thread each).
# cpu, 64 px: the 32 px figure scaled by pixels (not measured).
# cuda: one H100, ResNet18, bf16 (docs/GPU.md); a half-GPU trial gets ~0.73 of a whole GPU
# because two packed trials reach 1.46x of one.
THROUGHPUT: dict[tuple[str, int], float] = {
    ("cpu", 32): 326.0,
    ("cuda", 128): 32493.0,
    ("cuda", 224): 11450.0,
}
PACKING_GAIN = 1.46  # aggregate speed of two trials on one GPU relative to one (docs/GPU.md)
# Ray's placement strategies for the workers of one DDP trial (ScalingConfig.placement_strategy).
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class Resources:
    """Per-trial resources: DDP workers, GPUs and CPUs per worker.

    Attributes:
        workers: DDP processes of one trial (1 = no DDP).
        gpus_per_worker: may be fractional (0.5 packs two single-worker trials per GPU).
        cpus_per_worker: CPU cores per worker (threads for augmentation and the host loop).
        placement: how Ray places the workers of one trial: ``PACK`` (Ray's default: as few
            nodes as possible), ``STRICT_SPREAD`` (each worker on its own node), ...
    """

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    placement: str = "PACK"

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"workers per trial = {self.workers}: expected >= 1")
        # Written so that nan fails too (every comparison with nan is False).
        if not (self.gpus_per_worker >= 0 and self.cpus_per_worker > 0):
            raise ConfigError(
                f"gpus_per_worker={self.gpus_per_worker}, cpus_per_worker={self.cpus_per_worker}:"
                " expected GPUs >= 0 and CPUs > 0"
            )
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement {self.placement!r}: expected one of {list(PLACEMENTS)}")
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            # Two DDP ranks of one trial on one GPU make NCCL fail ("Duplicate GPU detected").
            raise ConfigError(
                f"{self.workers} workers with {self.gpus_per_worker} GPU each: fractional GPUs "
                "pack single-worker trials only; use whole GPUs for DDP"
            )

    @property
    def mode(self) -> str:
        """Return ``train`` (a Ray Train TorchTrainer per trial) or ``in-process``.

        A single-worker CPU trial runs the loop in the Tune trial process: a Train worker
        group would add ~20 s per trial (docs/RAY_MLFLOW.md). GPU and DDP trials use Ray Train.
        """
        return "train" if self.workers > 1 or self.gpus_per_worker > 0 else "in-process"

    def per_trial(self) -> dict[str, float]:
        """Return the total {"CPU": c, "GPU": g} one trial occupies."""
        return {
            "CPU": self.workers * self.cpus_per_worker,
            "GPU": self.workers * self.gpus_per_worker,
        }


def concurrency(res: Resources, cluster: Mapping[str, float], limit: int | None = None) -> int:
    """Return how many trials run at once: the cluster's fit, capped by ``limit``.

    Args:
        res: per-trial resources.
        cluster: ``ray.cluster_resources()`` (``CPU``, ``GPU``, ...).
        limit: ``--max-concurrent``; None = as many as fit.

    Returns:
        At least 1. When nothing fits yet (an autoscaling cluster before its GPU nodes
        start), ``limit`` or 1 is returned and Tune waits for resources.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--max-concurrent {limit}: expected >= 1")
    fits = [
        math.floor(cluster.get(name, 0.0) / need + 1e-9)
        for name, need in res.per_trial().items()
        if need > 0
    ]
    fit = min(fits) if fits else 1
    if fit < 1:
        return limit or 1
    return min(fit, limit) if limit else fit


def trial_throughput(device: str, image_size: int, gpus_per_worker: float, workers: int) -> float:
    """Return the expected training images/s of one trial (nearest measured image size).

    Throughput scales with pixels (image_size^2) from the nearest measured size, with the
    packing gain for fractional GPUs and linearly with DDP workers.
    """
    measured = {size: ips for (dev, size), ips in THROUGHPUT.items() if dev == device}
    if not measured:
        raise ConfigError(f"no throughput figure for device '{device}'")
    nearest = min(measured, key=lambda s: abs(s - image_size))
    ips = measured[nearest] * (nearest / image_size) ** 2
    if device == "cuda" and 0 < gpus_per_worker < 1:
        packed = max(1, round(1 / gpus_per_worker))
        ips *= (PACKING_GAIN if packed >= 2 else 1.0) / packed
    return ips * workers


def images_per_trial(config: Mapping[str, Any], counts: Mapping[str, int], per_exam: float) -> int:
    """Return a rough count of images one trial trains on (views counted), evaluation included.

    Args:
        config: the trial's flat config.
        counts: images per split (``labelled``, ``unlabelled``, ``val``, ``test``).
        per_exam: mean images per exam in the dataset (before ``max_images_per_exam``).

    Counted from the strategy's registry entry, as the loop counts ``train/img_per_s``: a step
    takes, from each of the strategy's draws, ``views`` x its exams per batch x the images per
    exam (capped by ``max_images_per_exam``). An ``epochs`` run passes ``epochs`` times over
    the first draw's pool (the label fraction of the labelled images, or the unlabelled ones:
    the labelled images when there are none); a ``steps`` run takes ``steps`` steps. Early
    stopping may end a run sooner. Each evaluation forwards the validation set, counted at a
    third of a training image, and the test set is forwarded once.

    Raises:
        ConfigError: the config names no registered strategy.
    """
    strategy = entry(config.get("strategy"))
    per_batch_exam = min(per_exam, config.get("max_images_per_exam", 16) or per_exam)
    pools = {
        "labelled": counts.get("labelled", 0) * config.get("label_fraction", 1.0),
        "unlabelled": counts.get("unlabelled", 0) or counts.get("labelled", 0),
    }

    def exams(draw: Draw) -> int:
        return int(config.get(draw.exams_key, param_default(draw.exams_key)))

    first, *others = strategy.draws
    steps_per_epoch = max(1, math.ceil(pools[first.pool] / max(per_exam, 1e-9) / exams(first)))
    other_images = sum(d.views * exams(d) * per_batch_exam for d in others)
    length = strategy.length(config)
    if strategy.unit == "epochs":
        # One pass draws every exam of the first pool once (the last batch may be short).
        epoch = first.views * pools[first.pool] * per_batch_exam / per_exam
        train, steps = length * (epoch + steps_per_epoch * other_images), length * steps_per_epoch
    else:
        steps = length
        train = steps * (first.views * exams(first) * per_batch_exam + other_images)
    evals = max(1, steps // (config.get("eval_every") or steps_per_epoch))
    return int(train + evals * counts.get("val", 0) / 3 + counts.get("test", 0) / 3)


def estimate_seconds(trial_images: list[int], ips: float, parallel: int, startup_s: float) -> float:
    """Return the wall time of trials run ``parallel`` at a time (longest-first packing)."""
    slots = [0.0] * max(1, parallel)
    for images in sorted(trial_images, reverse=True):
        slots[slots.index(min(slots))] += startup_s + images / ips
    return max(slots)
