"""The registry: one entry per strategy, and everything that is derived from it.

An entry names the strategy (the MLflow ``strategy`` param), its display label and colour,
its family, the config class of its own knobs, the module that implements it (imported on
first use, so this file and every caller that only needs names, configs or families stays
free of torch) and what the dry-run estimate needs: the unit of its length (``epochs`` or
``steps``) and the images each step draws. The ``uslearn train`` flags, the study validation,
estimates and ASHA's time axis, the analysis groupings (Table 1, best-model candidates,
t-SNE), figure labels and colours and the registry-wide tests all read it: adding a method is
its strategy file and one entry here.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import ModuleType
from typing import Any

from uslearn.config import ConfigError, split_flat
from uslearn.strategies import config as configs
from uslearn.strategies.config import TrainConfig

# Families group strategies in the analysis: clustering methods form Table 1 and get a t-SNE
# (their model has a ``cluster`` head); the others predict labels and compete for Table 2.
FAMILIES = ("clustering", "supervised", "semi-supervised")
# The config field that sets a strategy's length -> the loop's metric that counts it.
UNITS = {"epochs": "epoch", "steps": "step"}


@dataclass(frozen=True)
class Draw:
    """Images one training step takes from a pool of exams.

    Attributes:
        pool: ``labelled`` (the label fraction) or ``unlabelled`` (the labelled images when
            a dataset has no unlabelled ones).
        views: augmented views of each image that go through the network.
        exams_key: the config field giving the exams per batch from this pool.
    """

    pool: str
    views: int = 1
    exams_key: str = "batch_exams"


@dataclass(frozen=True)
class Entry:
    """One strategy of the registry.

    Attributes:
        name: registry key = MLflow ``strategy`` param = ``uslearn train --strategy``.
        label: display name in figures and tables.
        family: one of FAMILIES.
        module: the module whose ``build(train_config, own_config, data, ctx)`` returns the
            strategy object the loop runs (``loop.Strategy``).
        config: the config class of the strategy's own knobs (besides ``TrainConfig``).
        unit: ``epochs`` (an epoch is one pass over the first draw's pool) or ``steps``.
        draws: what one step takes from the data (the first draw paces the epoch).
        colour: index into seaborn's ``colorblind`` palette (fixed, so figures agree).
    """

    name: str
    label: str
    family: str
    module: str
    config: type
    unit: str
    draws: tuple[Draw, ...]
    colour: int

    def __post_init__(self):
        if self.family not in FAMILIES or self.unit not in UNITS:
            raise ValueError(f"registry entry {self.name!r}: bad family or unit")
        own = {f.name for f in fields(self.config)}
        if self.unit not in own:
            raise ValueError(f"registry entry {self.name!r}: {self.config} has no {self.unit!r}")
        if own & {f.name for f in fields(TrainConfig)}:
            # One flat namespace: a field in both configs would be ambiguous.
            raise ValueError(
                f"registry entry {self.name!r}: {self.config} repeats a TrainConfig field"
            )

    def length(self, config: Mapping[str, Any]) -> int:
        """Return the run's length in ``unit`` for flat ``config`` (the default when unset)."""
        default = next(f.default for f in fields(self.config) if f.name == self.unit)
        return int(config.get(self.unit, default))

    def load(self) -> ModuleType:
        """Return the strategy's module (imports torch)."""
        return importlib.import_module(self.module)


_TWO_VIEWS = (Draw("unlabelled", views=2),)  # clustering: two augmented views of each image
_LABELLED = (Draw("labelled"),)
_FIXMATCH = (Draw("labelled"), Draw("unlabelled", views=2, exams_key="unlabelled_exams"))

# One line per strategy: name, label, family, module, own config, unit, draws, colour.
ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("pica", "PICA", "clustering", "uslearn.strategies.clustering", configs.PicaConfig, "epochs", _TWO_VIEWS, 0),
        Entry("lsd", "LSD", "clustering", "uslearn.strategies.clustering", configs.LsdConfig, "epochs", _TWO_VIEWS, 1),
        Entry("iic", "IIC", "clustering", "uslearn.strategies.iic", configs.ClusteringConfig, "epochs", _TWO_VIEWS, 3),
        Entry("supervised", "Supervised", "supervised", "uslearn.strategies.supervised", configs.SupervisedConfig, "epochs", _LABELLED, 7),
        Entry("fixmatch_one", "One-Head", "semi-supervised", "uslearn.strategies.fixmatch", configs.FixMatchConfig, "steps", _FIXMATCH, 2),
        Entry("fixmatch_two", "Two-Head", "semi-supervised", "uslearn.strategies.fixmatch", configs.FixMatchConfig, "steps", _FIXMATCH, 4),
    )
}  # fmt: skip
STRATEGY_NAMES = tuple(ENTRIES)


def entry(name: str) -> Entry:
    """Return the registry entry of strategy ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names).
    """
    if name not in ENTRIES:
        raise ConfigError(f"strategy={name!r}: expected one of {list(STRATEGY_NAMES)}")
    return ENTRIES[name]


def names(family: str | None = None) -> tuple[str, ...]:
    """Return the registered strategy names (of ``family`` only, if given), in registry order."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r}: expected one of {FAMILIES}")
    return tuple(n for n, e in ENTRIES.items() if family is None or e.family == family)


def config_classes(strategy: str) -> tuple[type, ...]:
    """Return the config dataclasses whose fields form ``strategy``'s flat config."""
    return (TrainConfig, entry(strategy).config)


def parse_config(config: dict) -> tuple:
    """Return (TrainConfig, own config) from a flat dict; unknown keys raise ConfigError."""
    return split_flat(dict(config), *config_classes(config.get("strategy", TrainConfig.strategy)))


def resolved_config(config: dict) -> dict:
    """Return the full flat config with defaults filled in, plus ``init_kind`` and ``family``."""
    train, own = parse_config(config)
    flat = {**asdict(train), **asdict(own)}
    return {**flat, "init_kind": train.init_kind, "family": entry(train.strategy).family}


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Return what a resumed run would change of its checkpoint's run, one ``key=value`` each.

    A resumed run continues the optimiser, the counters and the random streams of the run
    that wrote the checkpoint, so every value must be that run's except its length (the
    strategy's unit, ``epochs`` or ``steps``): anything else would train the first steps with
    one config and the rest with another, while ``config.json`` records only the last.

    Args:
        saved: the resolved config stored in the checkpoint (keys it lacks are not compared:
            checkpoints written before a field existed).
        current: this run's resolved config (``resolved_config`` + ``dataset_fingerprint``).

    Returns:
        ``"lam=5.0 (the checkpoint's: 2.0)"`` per differing key, sorted; only the strategy
        when it differs (every other difference follows from it). Empty when resumable.
    """
    if saved.get("strategy", current.get("strategy")) != current.get("strategy"):
        return [f"strategy={current.get('strategy')!r} (the checkpoint's: {saved['strategy']!r})"]
    length = ENTRIES[current["strategy"]].unit if current.get("strategy") in ENTRIES else None
    return [
        f"{key}={current[key]!r} (the checkpoint's: {saved[key]!r})"
        for key in sorted(set(saved) & set(current))
        if key != length and saved[key] != current[key]
    ]


def _all_fields() -> dict[str, tuple[type, Any]]:
    """Return field name -> (config class that declares it last, field) over every config."""
    out = {}
    for cls in (TrainConfig, *(e.config for e in ENTRIES.values())):
        for f in fields(cls):
            out[f.name] = (cls, f)
    return out


def param_types() -> dict[str, type]:
    """Return the Python type of every config field (``lam`` -> float), for typed MLflow params."""
    out = {}
    for name, (cls, _) in _all_fields().items():
        hint = typing.get_type_hints(cls)[name]
        out[name] = hint if isinstance(hint, type) else str
    return out


def hyperparameters() -> tuple[str, ...]:
    """Return the knobs that carry a display label (``lam``, ``alpha``, ``tau``, ``lambda_u``).

    These are what a study sweeps and what the analysis plots a sensitivity figure for.
    """
    return tuple(name for name, (_, f) in _all_fields().items() if "label" in f.metadata)


def param_label(name: str) -> str:
    """Return the display label of config field ``name`` (its own name when it has none)."""
    found = _all_fields().get(name)
    return found[1].metadata.get("label", name) if found else name


def param_default(name: str) -> Any:
    """Return the default value of config field ``name`` (None for an unknown name)."""
    found = _all_fields().get(name)
    return found[1].default if found else None


__all__ = [
    "ENTRIES",
    "FAMILIES",
    "STRATEGY_NAMES",
    "UNITS",
    "Draw",
    "Entry",
    "config_classes",
    "entry",
    "hyperparameters",
    "names",
    "param_default",
    "param_label",
    "param_types",
    "parse_config",
    "resolved_config",
    "resume_conflicts",
]
