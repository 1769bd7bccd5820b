"""An active-learning trial's own knobs, and how they ride in a study's flat trial config.

A trial whose config has an ``acquisition`` key is a sequence of rounds (``rounds.run_rounds``)
instead of one training run: the ``ActiveConfig`` fields are split off the flat config, the
rest is the training config every round runs (``uslearn.strategies.run``). Nothing here
imports torch or Ray: the study driver validates and estimates with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from uslearn.config import ConfigError, field_names, from_flat


@dataclass(frozen=True)
class ActiveConfig:
    """Knobs of an active-learning trial (docs/ACTIVE_LEARNING.md).

    Attributes:
        acquisition: a name of ``uslearn.acquisition.ENTRIES``.
        rounds: rounds of acquire → reveal → train → evaluate.
        budget: exams (or images) revealed per round after the first.
        initial: exams (or images) revealed before the first training (0 = ``budget``); drawn
            at random unless the function needs no model (``cluster`` picks them itself).
        budget_unit: ``exams`` (the paper batches by exam: all frames of a picked exam are
            labelled) or ``images``.
        dc_model: a deep-clustering checkpoint whose clusters ``cluster`` spreads picks over
            ("" = none; required by ``cluster``).
    """

    acquisition: str = "random"
    rounds: int = 5
    budget: int = 4
    initial: int = 0
    budget_unit: Literal["exams", "images"] = "exams"
    dc_model: str = ""

    def __post_init__(self):
        from uslearn.acquisition import entry

        found = entry(self.acquisition)
        for name in ("rounds", "budget"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.initial < 0:
            raise ConfigError(f"initial={self.initial}: expected >= 0 (0 = budget)")
        if found.needs_clusters and not self.dc_model:
            raise ConfigError(
                f"acquisition '{self.acquisition}' needs a deep-clustering model: set dc_model"
            )

    def round_budget(self, index: int) -> int:
        """Return the exams (or images) revealed before training round ``index`` (0-based)."""
        return (self.initial or self.budget) if index == 0 else self.budget


ACTIVE_KEYS = field_names(ActiveConfig)


def split_active(config: Mapping[str, Any]) -> tuple[dict[str, Any], ActiveConfig | None]:
    """Return (training config, ActiveConfig) of a trial; (config, None) for a plain trial.

    Raises:
        ConfigError: a bad active-learning value, or active-learning keys without
            ``acquisition``.
    """
    train = {k: v for k, v in config.items() if k not in ACTIVE_KEYS}
    own = {k: v for k, v in config.items() if k in ACTIVE_KEYS}
    if not own:
        return dict(config), None
    if "acquisition" not in own:
        raise ConfigError(f"{sorted(own)} set without 'acquisition': not an active-learning trial")
    if train.get("label_fraction", 1.0) != 1.0:
        raise ConfigError("an active-learning trial picks its labels: leave label_fraction at 1")
    return train, from_flat(ActiveConfig, own)


def active_params(active: ActiveConfig) -> dict[str, Any]:
    """Return the MLflow params of an active-learning trial's own knobs."""
    return asdict(active)


def trial_images(
    config: Mapping[str, Any], counts: Mapping[str, int], per_exam: float, images_per_trial
) -> float:
    """Return the images one trial forwards: each round's training on its labels, plus scoring.

    ``images_per_trial`` is ``resources.images_per_trial`` (one training run at a label
    fraction); a round trains at the fraction its revealed labels make of the labelled split
    (at least fine-tuning's ``min_steps`` under its step rule: a round's few labels make
    short epochs) and then scores the whole pool once.
    """
    from uslearn.strategies.registry import param_default

    train, active = split_active(config)
    if active is None:
        return images_per_trial(config, counts, per_exam)

    def knob(name: str) -> Any:
        return train.get(name, param_default(name))

    pool = max(counts.get("labelled", 0), 1)
    per_pick = per_exam if active.budget_unit == "exams" else 1.0
    per_step = int(knob("batch_exams")) * min(per_exam, knob("max_images_per_exam") or per_exam)
    floor = int(knob("min_steps")) if knob("early_stopping") == "steps" else 0
    total, labels = 0.0, 0.0
    for index in range(active.rounds):
        labels = min(pool, labels + active.round_budget(index) * per_pick)
        fraction = max(min(labels / pool, 1.0), 1e-6)
        total += images_per_trial({**train, "label_fraction": fraction}, counts, per_exam)
        steps = math.ceil(labels / max(per_exam, 1e-9) / int(knob("batch_exams")))
        total += max(0, floor - steps * int(knob("epochs"))) * per_step  # the step floor
        total += pool / 3  # scoring the pool (forward only, like evaluation)
    return math.ceil(total)
