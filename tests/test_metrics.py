"""Metrics: equal to scikit-learn / scipy, thresholds from validation only, CIs over seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from uslearn.metrics import confidence_interval


def test_t_interval_matches_scipy():
    values = [0.61, 0.66, 0.64, 0.70]
    mean, low, high = confidence_interval(values, level=0.95, method="t")
    ref_low, ref_high = stats.t.interval(0.95, df=3, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx((ref_low, ref_high))


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = np.array([0.61, 0.66, 0.64, 0.70, 0.58])
    first = confidence_interval(values, method="bootstrap", n_boot=2000, seed=3)
    again = confidence_interval(values, method="bootstrap", n_boot=2000, seed=3)
    assert first == again
    mean, low, high = first
    assert values.min() <= low < mean < high <= values.max()


def test_bootstrap_interval_is_narrower_at_lower_level():
    values = np.arange(10, dtype=float)
    _, low90, high90 = confidence_interval(values, level=0.90, method="bootstrap")
    _, low99, high99 = confidence_interval(values, level=0.99, method="bootstrap")
    assert low99 <= low90 and high90 <= high99


def test_single_or_constant_values_give_a_degenerate_interval():
    assert confidence_interval([0.5]) == (0.5, 0.5, 0.5)
    assert confidence_interval([0.5, 0.5, 0.5], method="bootstrap") == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "values, kwargs",
    [([], {}), ([1.0, np.nan], {}), ([1.0, 2.0], {"level": 1.0}), ([1.0, 2.0], {"method": "z"})],
)
def test_confidence_interval_rejects_bad_input(values, kwargs):
    with pytest.raises(ValueError):
        confidence_interval(values, **kwargs)
