"""``random``: the baseline every other function must beat — groups drawn uniformly.

Each group (exam, or image) is equally likely, whatever its size: picking images uniformly
would favour long exams when the budget counts exams.
"""

from __future__ import annotations

import numpy as np

from uslearn.acquisition.pool import Pool


def rank(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Return every position, the groups in a seeded uniform random order."""
    unique, inverse = np.unique(pool.group, return_inverse=True)
    place = np.empty(len(unique), np.int64)
    place[rng.permutation(len(unique))] = np.arange(len(unique))
    return np.argsort(place[inverse], kind="stable")
