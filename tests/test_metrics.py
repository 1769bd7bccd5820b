"""Metrics: equal to scikit-learn / scipy, thresholds from validation only, CIs over seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, normalized_mutual_info_score, precision_recall_fscore_support

from uslearn.data.dataset import CLASSES
from uslearn.metrics import (
    ari,
    confidence_interval,
    fit_thresholds,
    hungarian_accuracy,
    label_combinations,
    match_clusters,
    multilabel_report,
    nmi,
)


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


def make_scores(n: int, c: int, seed: int, n_levels: int | None = None):
    """Return (scores, y): (n, c) scores correlated with random multi-hot labels."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int8)
    scores = 0.5 * y + rng.random((n, c))
    if n_levels is not None:  # few distinct values, as Algorithm 1's cluster scores are
        scores = np.round(scores * n_levels) / n_levels
    return scores, y


def brute_force_best_f1(scores, y):
    """Best F1 of one class over every threshold between distinct scores (and above all)."""
    candidates = np.r_[np.unique(scores), np.inf]
    return max(f1_score(y, scores >= t, zero_division=0) for t in candidates)


@pytest.mark.parametrize("n_levels", [None, 4])
def test_fit_thresholds_reach_the_best_validation_f1_of_each_class(n_levels):
    scores, y = make_scores(60, 5, seed=1, n_levels=n_levels)
    thresholds = fit_thresholds(scores, y)
    for c in range(5):
        reached = f1_score(y[:, c], scores[:, c] >= thresholds[c])
        assert reached == pytest.approx(brute_force_best_f1(scores[:, c], y[:, c]))


def test_fit_thresholds_tie_goes_to_the_largest_threshold():
    # Thresholds 0.9 (TP 1, FP 0, FN 1) and 0.5 (TP 2, FP 2, FN 0): both give F1 = 2/3.
    scores = np.array([[0.9], [0.5], [0.5], [0.5], [0.1]])
    y = np.array([[1], [1], [0], [0], [0]])
    assert fit_thresholds(scores, y)[0] == 0.9


def test_fit_thresholds_define_all_negative_and_all_positive_classes():
    scores = np.array([[0.2, 0.2], [0.7, 0.4], [0.9, 0.3]])
    y = np.array([[0, 1], [0, 1], [0, 1]])
    thresholds = fit_thresholds(scores, y)
    assert thresholds[0] == np.inf
    assert thresholds[1] == 0.2


def test_fit_thresholds_reject_unlabelled_rows():
    with pytest.raises(ValueError, match="0, 1"):
        fit_thresholds(np.zeros((2, 2)), np.array([[0, -1], [1, 0]]))


def test_multilabel_report_equals_scikit_learn_with_validation_thresholds():
    scores_val, y_val = make_scores(80, 7, seed=2)
    scores_test, y_test = make_scores(120, 7, seed=3)
    thresholds = fit_thresholds(scores_val, y_val)
    report = multilabel_report(scores_test, y_test, thresholds, CLASSES)
    pred = scores_test >= thresholds
    p, r, f, s = precision_recall_fscore_support(y_test, pred, zero_division=0)
    wp, wr, wf, _ = precision_recall_fscore_support(
        y_test, pred, average="weighted", zero_division=0
    )
    assert list(report.index) == [*CLASSES, "weighted"]
    np.testing.assert_allclose(report["precision"], np.r_[p, wp])
    np.testing.assert_allclose(report["recall"], np.r_[r, wr])
    np.testing.assert_allclose(report["f1"], np.r_[f, wf])
    np.testing.assert_array_equal(report["support"], np.r_[s, y_test.sum()])
    # Thresholds picked on the test set itself would score at least as well: they differ.
    on_test = multilabel_report(scores_test, y_test, fit_thresholds(scores_test, y_test), CLASSES)
    assert on_test.loc["weighted", "f1"] > report.loc["weighted", "f1"]


def test_label_combinations_are_sorted_by_frequency_with_rare_ones_dropped():
    y = np.array([[1, 0, 0]] * 5 + [[0, 1, 1]] * 3 + [[1, 1, 0]] * 3 + [[1, 1, 1]])
    combos = label_combinations(y, min_count=2)
    assert len(combos) == 3
    np.testing.assert_array_equal(combos.combos, [[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(combos.counts, [5, 3, 3])
    assert combos.combos.dtype == np.int8
    assert len(label_combinations(y, max_k=2)) == 2
    with pytest.raises(ValueError):
        label_combinations(y, min_count=6)


def test_label_combinations_encode_maps_unseen_to_the_nearest_then_most_frequent():
    y = np.array([[1, 0, 0]] * 5 + [[0, 1, 1]] * 3 + [[1, 1, 0]] * 3)
    combos = label_combinations(y)
    queries = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]])
    # [1,0,1] is 1 from [1,0,0] and 2 from the others; [1,1,1] is 1 from both [0,1,1] and
    # [1,1,0] (counts tie 3-3, lexicographic order puts [0,1,1] first); [0,0,0] is 1 from [1,0,0].
    np.testing.assert_array_equal(combos.encode(queries), [0, 2, 0, 1, 0])
    np.testing.assert_array_equal(combos.decode(combos.encode(y)), y)


def reference_match(assignments, y, k):
    rows = []
    for cluster in range(k):
        members = [y[i] for i in range(len(y)) if assignments[i] == cluster]
        if members:
            rows.append([sum(col) / len(members) for col in zip(*members)])
        else:
            rows.append([sum(col) / len(y) for col in zip(*y)])
    return np.array(rows)


def test_match_clusters_follows_algorithm_one_with_the_prior_for_empty_clusters():
    rng = np.random.default_rng(4)
    y = (rng.random((50, 7)) < 0.3).astype(np.int8)
    assignments = rng.integers(0, 6, size=50)  # cluster 6 and 7 of k=8 stay empty
    matrix = match_clusters(assignments, y, k=8)
    np.testing.assert_allclose(matrix, reference_match(assignments.tolist(), y.tolist(), 8))
    assert not np.isnan(matrix).any()
    np.testing.assert_allclose(matrix[7], y.mean(0))
    fallback = np.zeros(7)
    np.testing.assert_array_equal(match_clusters(assignments, y, 8, fallback=fallback)[6], 0)


def test_match_clusters_takes_the_argmax_of_cluster_probabilities():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    y = np.array([[1, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(match_clusters(probs, y, 2), [[0, 1], [1, 0.5]])
    with pytest.raises(ValueError):
        match_clusters(np.array([0, 2, 1]), y, 2)


def test_nmi_and_ari_are_one_for_a_relabelled_perfect_clustering():
    truth = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([5, 5, 3, 3, 9, 9])
    assert nmi(truth, clusters) == pytest.approx(1.0)
    assert ari(truth, clusters) == pytest.approx(1.0)
    assert nmi(truth, [0, 1, 2, 0, 1, 2]) == pytest.approx(
        normalized_mutual_info_score(truth, [0, 1, 2, 0, 1, 2])
    )


@pytest.mark.parametrize("n_clusters", [3, 5])
def test_hungarian_accuracy_equals_the_best_mapping_by_brute_force(n_clusters):
    rng = np.random.default_rng(n_clusters)
    truth = rng.integers(0, 3, size=40)
    clusters = np.where(rng.random(40) < 0.6, truth, rng.integers(0, n_clusters, size=40))
    best = 0.0
    for perm in itertools.permutations(range(n_clusters), 3):  # class c <- cluster perm[c]
        best = max(best, np.mean([perm[t] == p for t, p in zip(truth, clusters)]))
    assert hungarian_accuracy(truth, clusters) == pytest.approx(best)
