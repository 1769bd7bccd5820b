"""The registry of acquisition functions: one line per function, like the strategies'.

Each entry names a module of this package whose ``rank(pool, rng)`` orders every candidate
image of a ``Pool`` (most wanted first); ``select`` turns the order into one round's picks
under a budget of exams or images. Everything here is numpy: no torch, no labels.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from uslearn.acquisition.pool import Pool, take
from uslearn.config import ConfigError


@dataclass(frozen=True)
class Entry:
    """One acquisition function.

    Attributes:
        name: registry key = module name = the MLflow ``acquisition`` param.
        label: display name in figures.
        needs_model: False when it ranks without a trained classifier (round 0 included).
        needs_clusters: True when it needs a deep-clustering model's clusters.
        colour: index into seaborn's ``colorblind`` palette.
    """

    name: str
    label: str
    needs_model: bool
    needs_clusters: bool
    colour: int

    def rank(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        """Return the positions of ``pool`` ordered by this function."""
        return importlib.import_module(f"uslearn.acquisition.{self.name}").rank(pool, rng)


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("random", "Random", needs_model=False, needs_clusters=False, colour=7),
        Entry("entropy", "Entropy", needs_model=True, needs_clusters=False, colour=0),
        Entry("uncertainty", "Threshold margin", needs_model=True, needs_clusters=False, colour=1),
        Entry("cluster", "Cluster spread", needs_model=False, needs_clusters=True, colour=2),
        Entry("coreset", "Core-set", needs_model=True, needs_clusters=False, colour=4),
    )
}


def entry(name: str) -> Entry:
    """Return the entry of ``name``; raise ConfigError naming the known ones otherwise."""
    if name not in ENTRIES:
        raise ConfigError(f"acquisition '{name}': expected one of {list(ENTRIES)}")
    return ENTRIES[name]


def select(name: str, pool: Pool, budget: int, seed: int) -> np.ndarray:
    """Return the sorted pool positions function ``name`` picks: all images of ``budget`` groups.

    Deterministic given ``seed`` (the only randomness: ``random`` and core-set's first pick).
    """
    rng = np.random.default_rng(seed)
    order = entry(name).rank(pool, rng)
    if len(order) != len(pool) or len(np.unique(order)) != len(pool):
        raise AssertionError(f"acquisition '{name}' ranked {len(order)} of {len(pool)} images")
    return take(order, np.asarray(pool.group), budget)
