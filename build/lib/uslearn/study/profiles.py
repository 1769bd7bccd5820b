"""How big a study runs: the profiles (``cpu-demo``, ``cpu-long``, ``gpu``, ``paper``).

A profile sets the image size, a run length per unit, the dataset preset, how many seeds and
what one trial asks Ray for; ``--profile`` picks one and ``spec.make_plan`` applies it
(docs/STUDIES.md, "Profiles and flags").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from uslearn.study.resources import Resources


@dataclass(frozen=True)
class Profile:
    """How big a study runs: image size, run length, dataset, seeds and trial resources.

    Attributes:
        name: ``cpu-demo``, ``cpu-long``, ``gpu`` or ``paper``.
        dataset: phantom preset generated under ``uslearn.paths.data_dir()`` when no
            ``--data`` is given.
        overrides: ``TrainConfig`` fields set for every trial (they exist for every strategy).
        lengths: a run's length per unit (``epochs``, ``steps``): each trial gets the one of
            its strategy's unit.
        max_seeds: keep only the first seeds of a study (None = all of them).
        resources: what one trial asks Ray for.
        reduces: one sentence saying what this profile changes from the paper's protocol.
        grid_values: grid key -> the only values a study that sweeps it runs under this
            profile (``cpu-long`` keeps the label fractions 10 % and 100 %).
    """

    name: str
    dataset: str
    overrides: Mapping[str, Any]
    lengths: Mapping[str, int]
    max_seeds: int | None
    resources: Resources
    reduces: str
    grid_values: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


_ONE_CPU = Resources(workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0)  # per CPU trial
PROFILES: dict[str, Profile] = {
    "cpu-demo": Profile(
        name="cpu-demo",
        dataset="demo",
        # 32 px and a handful of epochs so that 20 trials finish in minutes on 2 CPU cores.
        overrides={"image_size": 32, "eval_every": 0},
        lengths={"epochs": 3, "steps": 60},
        max_seeds=2,
        resources=_ONE_CPU,
        reduces=(
            "demo phantom, 32 px images, 3 epochs or 60 steps (by the strategy's unit), "
            "2 seeds, 1 CPU per trial"
        ),
    ),
    "cpu-long": Profile(
        name="cpu-long",
        dataset="demo",
        # The phantom evidence of docs/RESULTS.md: 4 seeds, and budgets at which PICA and LSD
        # reach their plateau on the phantom (measured) while unsupervised_table,
        # lambda_sensitivity and label_fraction fit ~80 min on 2 quiet cores.
        overrides={"image_size": 32, "batch_exams": 8, "max_images_per_exam": 8},
        lengths={"epochs": 6, "steps": 150},
        max_seeds=4,
        resources=_ONE_CPU,
        reduces=(
            "demo phantom, 32 px images, batches of 8 exams × at most 8 images, 6 epochs or "
            "150 steps (by the strategy's unit), 4 seeds, label fractions 10 % and 100 % only, "
            "1 CPU per trial"
        ),
        grid_values={"label_fraction": (0.1, 1.0)},
    ),
    "gpu": Profile(
        name="gpu",
        dataset="demo",
        # 128 px keeps the organs' texture while a trial runs ~3x faster than at 224 px.
        overrides={"image_size": 128},
        lengths={"epochs": 30, "steps": 1500},
        max_seeds=None,
        # Two trials per GPU: packing gains ~1.46x aggregate, more loses (docs/GPU.md).
        resources=Resources(workers=1, gpus_per_worker=0.5, cpus_per_worker=4.0),
        reduces="128 px images, 30 epochs or 1 500 steps, two trials packed per GPU",
    ),
    "paper": Profile(
        name="paper",
        dataset="demo",
        # Sec. 3.2: 224 px ResNet18, 100 epochs (clustering), 5 000 steps (FixMatch).
        overrides={"image_size": 224},
        lengths={"epochs": 100, "steps": 5000},
        max_seeds=None,
        resources=Resources(workers=1, gpus_per_worker=1.0, cpus_per_worker=8.0),
        reduces="nothing: the paper's protocol (pass --data with your dataset)",
    ),
}
