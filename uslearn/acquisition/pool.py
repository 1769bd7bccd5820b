"""What an acquisition function sees, and how a budget turns a ranking into picks.

An acquisition function never sees a label: only the model's scores and features of the
candidate images, the features of the images already labelled, the validation thresholds and,
when a deep-clustering model is given, its cluster probabilities and features. The picks are
made by **group**: the exam of each image when the budget counts exams (the paper batches by
exam, so an annotator opens an exam and labels all its frames), the image itself otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uslearn.config import ConfigError

UNITS = ("exams", "images")


@dataclass(frozen=True)
class Pool:
    """The candidate (not yet labelled) images of one round, as arrays.

    Attributes:
        group: (N,) the unit a budget counts: exam id of each image, or its position.
        scores: (N, C) the current model's sigmoid scores, or None (before any model).
        thresholds: (C,) the current model's validation-fitted thresholds, or None.
        features: (N, D) the current model's backbone features, or None.
        labelled_features: (M, D) the same features of the images labelled so far, or None.
        clusters: (N,) argmax cluster of a deep-clustering model, or None.
        cluster_probs: (N, K) its cluster probabilities, or None.
        cluster_features: (N, D') its backbone features, or None.
    """

    group: np.ndarray
    scores: np.ndarray | None = None
    thresholds: np.ndarray | None = None
    features: np.ndarray | None = None
    labelled_features: np.ndarray | None = None
    clusters: np.ndarray | None = None
    cluster_probs: np.ndarray | None = None
    cluster_features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.group)

    def need(self, name: str, *fields: str) -> None:
        """Raise ConfigError naming the first of ``fields`` that function ``name`` lacks."""
        for f in fields:
            if getattr(self, f) is None:
                raise ConfigError(f"acquisition '{name}' needs the pool's {f}, which is missing")


def groups_of(exam: np.ndarray, unit: str) -> np.ndarray:
    """Return the group of each image under budget ``unit``: its exam, or its own position."""
    if unit not in UNITS:
        raise ConfigError(f"budget unit '{unit}': expected one of {list(UNITS)}")
    return np.asarray(exam) if unit == "exams" else np.arange(len(exam))


def take(order: np.ndarray, group: np.ndarray, budget: int) -> np.ndarray:
    """Return the sorted positions of every image of the first ``budget`` groups of ``order``.

    ``order`` ranks images (most wanted first); a group enters at its first image in it, so a
    ranking of images is also a ranking of exams (an exam counts as wanted as its most wanted
    frame). Fewer groups than ``budget`` left: all of them.
    """
    if budget < 1:
        raise ConfigError(f"budget {budget}: expected >= 1")
    order = np.asarray(order, dtype=np.int64)
    _, first = np.unique(np.asarray(group)[order], return_index=True)
    chosen = np.asarray(group)[order[np.sort(first)[:budget]]]
    return np.flatnonzero(np.isin(group, chosen))


def by_score(score: np.ndarray) -> np.ndarray:
    """Return positions by descending ``score``, ties in position order (deterministic)."""
    return np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
