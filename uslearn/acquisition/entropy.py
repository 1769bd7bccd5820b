"""``entropy``: multi-label uncertainty as the mean binary entropy of the sigmoid scores.

    u_i = -(1/C) Σ_c [p_ic log p_ic + (1 - p_ic) log(1 - p_ic)]        (nats, in [0, log 2])

The classes are independent Bernoulli outputs, so the entropy of the joint label is the sum
of the per-class entropies; the mean keeps it in [0, log 2]. An exam ranks at its most
uncertain frame (``pool.take``).
"""

from __future__ import annotations

import numpy as np

from uslearn.acquisition.pool import Pool, by_score


def mean_binary_entropy(scores: np.ndarray) -> np.ndarray:
    """Return the (N,) mean binary entropy of (N, C) scores in [0, 1] (0 log 0 = 0)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p)).mean(axis=1)


def rank(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Return positions by descending mean binary entropy."""
    pool.need("entropy", "scores")
    return by_score(mean_binary_entropy(pool.scores))
