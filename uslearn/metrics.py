"""Evaluation metrics (paper Sec. 3.2) on numpy arrays; no torch import, analysis uses this too.

Thresholds are fitted on validation scores only and then applied unchanged to the test set;
reports match scikit-learn's ``precision_recall_fscore_support`` on the thresholded predictions.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CI_METHODS = ("t", "bootstrap")


def confidence_interval(
    values, level: float = 0.95, method: str = "t", n_boot: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and two-sided confidence interval of a metric over seeds.

    Args:
        values: 1-D sequence of the metric, one value per seed (NaNs are not allowed).
        level: coverage of the interval, in (0, 1).
        method: ``"t"`` = Student t interval ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)``;
            ``"bootstrap"`` = percentile bootstrap of the mean with ``n_boot`` resamples.
        n_boot: bootstrap resamples (``method="bootstrap"`` only).
        seed: seed of the bootstrap's random generator, so the interval is reproducible.

    Returns:
        ``(mean, low, high)`` as floats. With a single value, or values that are all equal,
        the interval collapses to ``(mean, mean, mean)``.

    Raises:
        ValueError: empty input, NaN/inf values, a level outside (0, 1) or an unknown method.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("confidence_interval: no values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"confidence_interval: values must be finite, got {arr.tolist()}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence_interval: level must lie in (0, 1), got {level}")
    if method not in CI_METHODS:
        raise ValueError(f"confidence_interval: method must be one of {CI_METHODS}, got {method!r}")
    mean = float(arr.mean())
    if arr.size == 1 or np.ptp(arr) == 0.0:
        return mean, mean, mean
    if method == "t":
        sem = arr.std(ddof=1) / np.sqrt(arr.size)
        half = float(stats.t.ppf((1.0 + level) / 2.0, df=arr.size - 1) * sem)
        return mean, mean - half, mean + half
    rng = np.random.default_rng(seed)
    # (n_boot, n) resamples of the seeds, with replacement; the interval is on their means.
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)
