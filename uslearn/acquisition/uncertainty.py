"""``uncertainty``: the image whose decision is closest to flipping, for any class.

The labels are decided per class by a validation-fitted threshold t_c (Sec. 3.2), not at 0.5,
so the margin that matters is to t_c, measured on the logit scale (a score of 0.99 against a
threshold of 0.98 is less settled than 0.5 against 0.49 would suggest on the probability scale):

    m_i = min_c | logit(p_ic) - logit(t_c) |,      u_i = -m_i

A class that is never predicted (t_c = inf) has no decision to flip and is left out.
"""

from __future__ import annotations

import numpy as np

from uslearn.acquisition.pool import Pool, by_score


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def threshold_margin(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Return the (N,) smallest logit-scale distance of (N, C) scores to (C,) thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    active = np.isfinite(t)
    if not active.any():
        return np.zeros(len(scores))
    gaps = np.abs(_logit(scores[:, active]) - _logit(t[active]))  # (N, C')
    return gaps.min(axis=1)


def rank(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Return positions by ascending margin to the thresholds (most uncertain first)."""
    pool.need("uncertainty", "scores", "thresholds")
    return by_score(-threshold_margin(pool.scores, pool.thresholds))
