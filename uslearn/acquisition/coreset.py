"""``coreset``: diversity by k-center greedy on the model's features (Sener & Savarese 2018,
arXiv:1708.00489, "Active Learning for CNNs: a Core-Set Approach").

With S the labelled images and the picks so far, each step takes the candidate farthest from
its nearest centre:

    i* = argmax_{i ∉ S} min_{j ∈ S} || f_i - f_j ||₂,     then S ← S ∪ group(i*)

so the picks cover feature space (minimise the largest distance of any image to a labelled
one). When the budget counts exams, every image of the picked exam becomes a centre at once,
as it will be labelled with it. With nothing labelled yet, the first pick is drawn at random.
"""

from __future__ import annotations

import numpy as np

from uslearn.acquisition.pool import Pool


def k_center_order(
    feats: np.ndarray, centres: np.ndarray | None, group: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Return every position, groups in k-center greedy order (each group's members together)."""
    feats = np.asarray(feats, dtype=np.float64)
    n = len(feats)
    if centres is not None and len(centres):
        c = np.asarray(centres, dtype=np.float64)
        # ||a - b||² = ||a||² + ||b||² - 2 a·b, for all pairs at once: (N, M) → (N,)
        sq = (feats**2).sum(1)[:, None] + (c**2).sum(1)[None, :] - 2 * feats @ c.T
        nearest = np.sqrt(np.maximum(sq, 0).min(axis=1))
    else:
        nearest = np.full(n, np.inf)
    taken = np.zeros(n, bool)
    order: list[np.ndarray] = []
    while not taken.all():
        if np.isinf(nearest[~taken]).all():
            i = int(rng.choice(np.flatnonzero(~taken)))
        else:
            i = int(np.flatnonzero(~taken)[np.argmax(nearest[~taken])])  # first of ties
        members = np.flatnonzero((group == group[i]) & ~taken)
        order.append(members)
        taken[members] = True
        for j in members:  # the new centres: update every candidate's nearest distance
            nearest = np.minimum(nearest, np.linalg.norm(feats - feats[j], axis=1))
    return np.concatenate(order) if order else np.zeros(0, np.int64)


def rank(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Return positions in k-center greedy order over the current model's features."""
    pool.need("coreset", "features")
    return k_center_order(pool.features, pool.labelled_features, np.asarray(pool.group), rng)
