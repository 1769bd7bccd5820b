"""Spreading picks over clusters: the ranking ``uslearn curate`` prints and the ``cluster``
acquisition function share it (pure numpy, no model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def nearest_centre_distance(features: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Return each image's cosine distance to the nearest centre of a non-empty cluster.

    Centres are the re-normalised means of the L2-normalised features of each cluster's images.
    """
    feats = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    present = np.unique(cluster)
    centres = np.stack([feats[cluster == k].mean(axis=0) for k in present])  # (K', D)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return 1.0 - (feats @ centres.T).max(axis=1)


def percentile(values: np.ndarray) -> np.ndarray:
    """Return each value's rank among ``values`` scaled to [0, 1] (ties share the mean rank)."""
    if len(values) < 2:
        return np.ones(len(values))
    return (pd.Series(values).rank(method="average").to_numpy() - 1) / (len(values) - 1)


def curate_priority(cluster_probs: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Return curate's priority max(pct(1 - margin), pct(distance)) of each image.

    margin = p1 - p2 of the two most probable clusters; pct = percentile over the images: an
    image is urgent when it is among the most uncertain *or* the farthest from every centre.
    """
    probs = np.asarray(cluster_probs, dtype=np.float64)
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([0 * probs, probs])
    margin = top2[:, 1] - top2[:, 0]
    return np.maximum(percentile(1.0 - margin), percentile(distance))


def spread_ranking(
    priority: np.ndarray, cluster: np.ndarray, exam: np.ndarray, limit: int
) -> list[int]:
    """Return up to ``limit`` candidate positions: clusters in turn, new exams first.

    Clusters take turns largest first; each turn picks that cluster's highest-priority image
    whose exam is not in the list yet, else its highest-priority image left.
    """
    order = {}
    for k in pd.Series(cluster).value_counts(sort=True).index:  # largest cluster first
        members = np.flatnonzero(cluster == k)
        order[k] = list(members[np.argsort(-priority[members], kind="stable")])
    picked: list[int] = []
    used_exams: set = set()
    while len(picked) < limit and any(order.values()):
        for queue in order.values():
            if not queue or len(picked) >= limit:
                continue
            fresh = next((j for j, i in enumerate(queue) if exam[i] not in used_exams), 0)
            i = queue.pop(fresh)
            picked.append(int(i))
            used_exams.add(exam[i])
    return picked
