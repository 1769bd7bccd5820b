"""What a study is: a fixed config, the swept dimensions, the seeds, the metric, and a profile.

A study is a record (STYLE §3): ``studies/<question>.py`` builds one ``StudySpec`` and hands it
to ``uslearn.study_cli.main``. ``make_plan`` resolves a spec under a profile into the exact trials
(grids) or the search space (searches) and checks every key against the strategy's config
dataclasses before anything is launched (STYLE §1.4). Nothing here imports Ray or torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uslearn.config import ConfigError
from uslearn.strategies.registry import ENTRIES
from uslearn.study.profiles import PROFILES, Profile
from uslearn.study.resources import Resources

# Which trials log their MLflow model (43 MB for ResNet18): the best of each cell by the
# study's metric (a search is one cell), every trial, or none (uslearn/study/kept_models.py).
MODEL_POLICIES = ("best", "all", "none")


@dataclass(frozen=True)
class LogUniform:
    """A search dimension drawn log-uniformly from [low, high]."""

    low: float
    high: float

    def corners(self) -> tuple[float, ...]:
        """Return the values validation checks: both ends."""
        return (self.low, self.high)


@dataclass(frozen=True)
class Uniform:
    """A search dimension drawn uniformly from [low, high]."""

    low: float
    high: float

    def corners(self) -> tuple[float, ...]:
        """Return the values validation checks: both ends."""
        return (self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """A search dimension drawn from a finite set of values."""

    values: tuple[Any, ...]

    def corners(self) -> tuple[Any, ...]:
        """Return the values validation checks: all of them."""
        return tuple(self.values)


Distribution = LogUniform | Uniform | Choice


@dataclass(frozen=True)
class Search:
    """An Optuna TPE search: distributions, trial budget per profile, optional ASHA pruning.

    Attributes:
        space: config key -> distribution.
        num_samples: trials per profile name (``default`` for profiles not listed).
        asha: stop unpromising trials early (searches only; never for ablation grids).
        grace_period: how long every trial runs before ASHA may stop it, in its strategy's
            unit (epochs or steps).
    """

    space: Mapping[str, Distribution]
    num_samples: Mapping[str, int]
    asha: bool = True
    grace_period: int = 2

    def samples(self, profile: str) -> int:
        """Return the number of trials for ``profile``."""
        if profile in self.num_samples:
            return self.num_samples[profile]
        if "default" in self.num_samples:
            return self.num_samples["default"]
        raise ConfigError(f"search has no num_samples for profile '{profile}' and no 'default'")


@dataclass(frozen=True)
class StudySpec:
    """One experiment: trials = arms x grid x seeds (an ablation), or a search.

    Attributes:
        name: study name (MLflow experiment, ``study`` tag, Tune experiment folder).
        title: what the study reproduces, e.g. "Fig. 5: PICA vs LSD over lambda".
        fixed: config values shared by every trial (flat ``TrainConfig`` + strategy keys).
        arms: named alternatives that are not a product of values (e.g. strategy + init pairs).
        grid: config key -> values; every arm runs with every combination.
        seeds: the ``seed`` values each cell runs with (a profile may keep only the first).
        search: an Optuna search instead of a grid (``arms`` must then be a single arm).
        metric: what Tune ranks trials by (validation, never test: thresholds and model
            selection must not see the test set).
        mode: ``max`` or ``min``.
        resources: profile name -> per-trial resources replacing the profile's.
        max_failures: retries of a trial whose process dies (from its last checkpoint).
        log_models: which trials log their MLflow model: ``best`` (the best finished trial of
            each cell by ``metric``, logged when the study ends; a search is one cell),
            ``all`` or ``none``. The others keep metrics, params and small artifacts, and
            their ``best.pt`` in their output folder.
        notes: lines printed before the study starts (e.g. an arm that was skipped).
        profile_fixed: profile name -> config values of this study under that profile, above
            the profile's own overrides and length (an active-learning study's rounds and
            budgets scale with the profile).
    """

    name: str
    title: str
    fixed: Mapping[str, Any]
    arms: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"": {}})
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] = (0, 1, 2, 3)
    search: Search | None = None
    metric: str = "val/f1_weighted"
    mode: str = "max"
    resources: Mapping[str, Resources] = field(default_factory=dict)
    max_failures: int = 2
    log_models: str = "best"
    notes: tuple[str, ...] = ()
    profile_fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ConfigError(f"study name '{self.name}': expected lower_snake_case")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"study '{self.name}': mode={self.mode!r}; expected max or min")
        if self.log_models not in MODEL_POLICIES:
            raise ConfigError(
                f"study '{self.name}': log_models={self.log_models!r}; expected one of "
                f"{', '.join(MODEL_POLICIES)}"
            )
        if not self.arms:
            raise ConfigError(f"study '{self.name}': no arms left to run")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study '{self.name}': seeds {list(self.seeds)} must be distinct")
        if self.search is not None and len(self.arms) != 1:
            raise ConfigError(f"study '{self.name}': a search takes one arm, got {len(self.arms)}")
        swept = set(self.grid) | (set(self.search.space) if self.search else set())
        if "seed" in swept or "seed" in self.fixed:
            raise ConfigError(f"study '{self.name}': set seeds with `seeds=`, not as a config key")
        for key, values in self.grid.items():
            if not values:
                raise ConfigError(f"study '{self.name}': grid '{key}' has no values")


@dataclass(frozen=True)
class Cell:
    """One point of an ablation (an arm with one grid combination), run once per seed."""

    name: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """A spec resolved under a profile: what Tune gets, and how a trial rebuilds its config.

    ``base`` holds every value common to all trials; a grid trial's Tune config is
    ``{"cell": name, "seed": s}`` and a search trial's is its sampled values. ``trial_config``
    turns either back into the full flat config the strategy receives, with the run length of
    its strategy's unit (``lengths``, the profile's) unless the command line or the cell sets it.
    """

    spec: StudySpec
    profile: Profile
    resources: Resources
    base: Mapping[str, Any]
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    lengths: Mapping[str, int]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_search(self) -> bool:
        """Return True for an Optuna search, False for a grid."""
        return self.spec.search is not None

    def trial_config(self, tune_config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the flat strategy config of the Tune trial whose config is ``tune_config``."""
        tune_config = dict(tune_config)
        if self.is_search:
            cell = self.cells[0]
        else:
            cell = {c.name: c for c in self.cells}[tune_config.pop("cell")]
        config = {**self.base, **cell.overrides, **tune_config}
        strategy = ENTRIES.get(config.get("strategy"))  # an unknown one fails in ``validate``
        # The profile's length ranks above spec.fixed and below the command line and the cell.
        given = {
            *self.overrides,
            *cell.overrides,
            *tune_config,
            # The study's own length for this profile, unless the smoke test took it out.
            *(k for k in self.spec.profile_fixed.get(self.profile.name, {}) if k in self.base),
        }
        if strategy is not None and strategy.unit not in given:
            config[strategy.unit] = self.lengths[strategy.unit]
        return config

    def grid_trials(self) -> list[tuple[Cell, int, dict[str, Any]]]:
        """Return (cell, seed, flat config) of every trial of a grid, cells outermost."""
        return [
            (cell, seed, self.trial_config({"cell": cell.name, "seed": seed}))
            for cell in self.cells
            for seed in self.seeds
        ]

    def num_trials(self) -> int:
        """Return how many trials the study runs."""
        if self.is_search:
            return self.spec.search.samples(self.profile.name)
        return len(self.cells) * len(self.seeds)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make_cells(spec: StudySpec) -> tuple[Cell, ...]:
    """Return the cells of ``spec``: every arm with every grid combination, in order.

    A cell's name is its arm's name followed by ``key=value`` for each grid key
    (``"lsd lam=2"``); it names the MLflow child runs and the Tune trials.
    """
    keys = list(spec.grid)
    cells = []
    for arm_name, arm in spec.arms.items():
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            label = " ".join([arm_name, *(f"{k}={_fmt(v)}" for k, v in point.items())]).strip()
            cells.append(Cell(name=label or spec.name, overrides={**arm, **point}))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"study '{spec.name}': two cells share a name; give arms distinct names")
    return tuple(cells)


def make_plan(
    spec: StudySpec,
    profile: str,
    *,
    resources: Resources | None = None,
    num_seeds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """Return the plan of ``spec`` under ``profile`` (not yet validated: see ``validate``).

    Precedence, lowest first: ``spec.fixed``, the profile's overrides and run length, the
    study's ``profile_fixed`` values of that profile, ``overrides`` (command line), then each cell's values and the seed. ``device`` and
    ``workers`` follow the trial resources. So an override of a key that the grid, the
    search or an arm sets (or of ``seed``, ``device``, ``workers``) would be ignored: it is
    refused instead.

    Raises:
        ConfigError: unknown profile, a seed count below 1, or such an override.
    """
    if profile not in PROFILES:
        raise ConfigError(f"profile '{profile}': expected one of {list(PROFILES)}")
    prof = PROFILES[profile]
    res = resources or spec.resources.get(profile, prof.resources)
    keep = num_seeds if num_seeds is not None else prof.max_seeds
    if keep is not None and keep < 1:
        raise ConfigError(f"--seeds {keep}: expected >= 1")
    seeds = tuple(spec.seeds[:keep] if keep is not None else spec.seeds)
    spec = _restrict_grid(spec, prof)
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        _refuse_overridden(spec, key, value)
    base = {**spec.fixed, **prof.overrides, **spec.profile_fixed.get(profile, {}), **overrides}
    if spec.search is not None:
        base["seed"] = seeds[0]  # a search compares configurations, not seeds
        seeds = seeds[:1]
    cells = make_cells(spec)
    return Plan(spec, prof, res, _follow(base, res), cells, seeds, prof.lengths, overrides)


def _restrict_grid(spec: StudySpec, prof: Profile) -> StudySpec:
    """Return ``spec`` with each grid key the profile restricts cut to the profile's values.

    Raises:
        ConfigError: a restriction leaves a grid key without values.
    """
    grid = dict(spec.grid)
    for key, keep in prof.grid_values.items():
        if key not in grid:
            continue
        grid[key] = [v for v in grid[key] if v in keep]
        if not grid[key]:
            raise ConfigError(
                f"study '{spec.name}': profile '{prof.name}' keeps {key} in {list(keep)}, "
                f"which the study's values {list(spec.grid[key])} do not include"
            )
    return dataclasses.replace(spec, grid=grid)


def swept_keys(spec: StudySpec) -> dict[str, str]:
    """Return key -> what sets it per trial (grid, search or arms): values no --set may change."""
    found = {key: f"sweeps it over its grid {list(values)}" for key, values in spec.grid.items()}
    if spec.search is not None:
        found.update({k: f"searches it over {d!r}" for k, d in spec.search.space.items()})
    for name, arm in spec.arms.items():
        for key, value in arm.items():
            found.setdefault(key, f"sets it in its arm '{name}' ({key}={value!r})")
    return found


def _refuse_overridden(spec: StudySpec, key: str, value: Any) -> None:
    """Raise ConfigError for a ``--set`` that a trial's own values would silently override."""
    given = f"--set {key}={value!r}"
    swept = swept_keys(spec).get(key)
    if swept is not None:
        raise ConfigError(
            f"{given}: study '{spec.name}' {swept}, which wins over --set; change the values "
            "in the study file (or a copy of it) instead"
        )
    if key == "seed":
        raise ConfigError(f"{given}: a study runs its seeds {list(spec.seeds)}; use --seeds N")
    if key in ("workers", "device"):
        raise ConfigError(
            f"{given}: a study sets workers and device from the trial resources; use "
            "--workers-per-trial and --num-gpus-per-trial"
        )


def _follow(base: Mapping[str, Any], res: Resources) -> dict[str, Any]:
    """Return ``base`` with ``workers`` and ``device`` set from the trial resources.

    Ray shows a trial only the GPUs it asked for, so the device is a consequence of the
    resources, never an independent choice. GPU trials get ``auto``, which the loop resolves
    to ``cuda:$LOCAL_RANK``: a bare ``cuda`` would put every DDP rank of a node on GPU 0.
    """
    device = "auto" if res.gpus_per_worker > 0 else "cpu"
    return {**base, "workers": res.workers, "device": device}


def validate(plan: Plan) -> None:
    """Check every trial config against its strategy's config dataclasses; return None.

    Grids are checked trial by trial; searches at every corner of every dimension (both ends
    of a range, each choice), so a value out of a dataclass's range fails here, not in trial 37.

    Raises:
        ConfigError: naming the study, the cell and the key or value that was rejected.
    """
    from uslearn.strategies.registry import parse_config
    from uslearn.study.active import split_active

    def check(where: str, config: Mapping[str, Any]) -> None:
        if "strategy" not in config:
            raise ConfigError(f"{where}: no strategy given (set it in fixed or in the arms)")
        try:
            # An active-learning trial's own knobs (study/active.py) ride beside the training
            # config that each of its rounds runs.
            parse_config(split_active(config)[0])
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    name = plan.spec.name
    if plan.is_search:
        base = plan.trial_config({})
        for key, dist in plan.spec.search.space.items():
            for value in dist.corners():
                check(f"study '{name}' search {key}={value!r}", {**base, key: value})
        return
    for cell, seed, config in plan.grid_trials():
        check(f"study '{name}' cell '{cell.name}' seed {seed}", config)
