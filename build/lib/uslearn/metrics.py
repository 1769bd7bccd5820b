"""Evaluation metrics (paper Sec. 3.2) on numpy arrays; no torch import, analysis uses this too.

Thresholds are fitted on validation scores only and then applied unchanged to the test set;
reports match scikit-learn's ``precision_recall_fscore_support`` on the thresholded predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    precision_recall_fscore_support,
)
from sklearn.metrics.cluster import contingency_matrix

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


def _check_binary(name: str, y: np.ndarray) -> np.ndarray:
    """Return y as an int8 (N, C) array, or raise when it is not 2-D with values in {0, 1}."""
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"{name}: expected a (N, C) array, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: expected values in {{0, 1}} (unlabelled rows removed)")
    return y.astype(np.int8, copy=False)


def _check_scores(scores, y: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != y.shape:
        raise ValueError(f"scores {scores.shape} and labels {y.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores


def fit_thresholds(scores_val, y_val) -> np.ndarray:
    """Per class, the score threshold that maximises that class's F1 on the validation set.

    A class is predicted present when ``score >= threshold``. Candidate thresholds are the
    distinct validation scores of the class. Rules:

    - ties in F1: the largest threshold wins (fewest positives, so the highest precision);
    - a class with no positive validation image: ``+inf`` (never predicted), since no threshold
      gives it a non-zero F1 and predicting it would only add false positives;
    - a class with no negative validation image: its smallest score (everything positive).

    The API takes validation data only, so thresholds cannot be fitted on the test set.

    Args:
        scores_val: (N, C) scores (probabilities, logits or Algorithm 1's soft labels).
        y_val: (N, C) multi-hot validation labels in {0, 1}.

    Returns:
        (C,) float64 thresholds, to be applied unchanged to the test scores.
    """
    y = _check_binary("y_val", y_val)
    scores = _check_scores(scores_val, y)
    if len(y) == 0:
        raise ValueError("fit_thresholds: empty validation set")
    thresholds = np.full(y.shape[1], np.inf)
    for c in range(y.shape[1]):
        positives = int(y[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        ranked, hits = scores[order, c], y[order, c]
        # Cut after the last image of each run of equal scores: predictions are score >= t.
        last_of_value = np.r_[ranked[1:] != ranked[:-1], True]
        tp = np.cumsum(hits)[last_of_value]
        n_pred = np.flatnonzero(last_of_value) + 1
        f1 = 2.0 * tp / (n_pred + positives)
        # argmax takes the first maximum, i.e. the largest threshold among ties.
        thresholds[c] = ranked[last_of_value][int(np.argmax(f1))]
    return thresholds


def multilabel_report(scores, y, thresholds, classes) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support of thresholded scores, plus their weighted mean.

    Equal to scikit-learn's ``precision_recall_fscore_support`` on ``scores >= thresholds`` with
    ``zero_division=0`` (a class never predicted has precision 0).

    Args:
        scores: (N, C) test scores.
        y: (N, C) multi-hot labels in {0, 1}.
        thresholds: (C,) from ``fit_thresholds`` on the validation set.
        classes: the C class names, in column order.

    Returns:
        DataFrame indexed by the class names and ``"weighted"`` (support-weighted average,
        ``average="weighted"``; its support is the total number of positive labels), columns
        ``precision``, ``recall``, ``f1``, ``support``.
    """
    y = _check_binary("y", y)
    scores = _check_scores(scores, y)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    classes = list(classes)
    if thresholds.shape != (y.shape[1],) or len(classes) != y.shape[1]:
        raise ValueError(
            f"expected {y.shape[1]} thresholds and class names, "
            f"got {thresholds.shape} and {len(classes)}"
        )
    pred = (scores >= thresholds).astype(np.int8)
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    wp, wr, wf, _ = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    frame = pd.DataFrame(
        {
            "precision": np.r_[p, wp],
            "recall": np.r_[r, wr],
            "f1": np.r_[f, wf],
            "support": np.r_[s, s.sum()].astype(np.int64),
        },
        index=pd.Index([*classes, "weighted"], name="class"),
    )
    return frame


@dataclass(frozen=True, eq=False)
class LabelCombinations:
    """The K label combinations used as clusters / Two-Head classes (paper Sec. 2.2.3).

    Attributes:
        combos: (K, C) int8 multi-hot combinations, most frequent first (ties: lexicographic).
        counts: (K,) int64 number of training images with each combination.
    """

    combos: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.combos.shape[0])

    def encode(self, y) -> np.ndarray:
        """Return the (N,) int64 combination index of each multi-hot row of y: (N, C).

        An exact match maps to its combination; a rare or unseen one to the kept combination
        at the smallest Hamming distance, ties going to the more frequent (lower index).
        """
        y = _check_binary("y", y)
        if y.shape[1] != self.combos.shape[1]:
            raise ValueError(f"y has {y.shape[1]} classes, combinations {self.combos.shape[1]}")
        yi, ci = y.astype(np.int32), self.combos.astype(np.int32)
        # Hamming distance as two products: ones of y missing in c + ones of c missing in y.
        hamming = yi @ (1 - ci).T + (1 - yi) @ ci.T  # (N, K)
        return np.argmin(hamming, axis=1).astype(np.int64)

    def decode(self, index) -> np.ndarray:
        """Return the (N, C) int8 combinations of the (N,) indices."""
        return self.combos[np.asarray(index, dtype=np.int64)]


def label_combinations(y, min_count: int = 1, max_k: int | None = None) -> LabelCombinations:
    """Return the label combinations seen at least ``min_count`` times in y, at most ``max_k``.

    Args:
        y: (N, C) multi-hot labels in {0, 1} (the labelled training set: its "label priors").
        min_count: combinations seen fewer times are dropped (their images map to the nearest
            kept combination by ``encode``).
        max_k: keep only the ``max_k`` most frequent combinations.

    Returns:
        ``LabelCombinations`` sorted by count, most frequent first.
    """
    y = _check_binary("y", y)
    if min_count < 1 or (max_k is not None and max_k < 1):
        raise ValueError(f"min_count and max_k must be >= 1, got {min_count}, {max_k}")
    if len(y) == 0:
        raise ValueError("label_combinations: no labelled rows")
    combos, counts = np.unique(y, axis=0, return_counts=True)
    order = sorted(range(len(combos)), key=lambda i: (-counts[i], tuple(combos[i])))
    order = [i for i in order if counts[i] >= min_count][:max_k]
    if not order:
        raise ValueError(f"no combination is seen {min_count} times or more")
    return LabelCombinations(
        combos=combos[order].astype(np.int8), counts=counts[order].astype(np.int64)
    )


def match_clusters(assignments, y, k: int, fallback=None) -> np.ndarray:
    """Algorithm 1: the mean multi-hot label v̂_k of the labelled images in each cluster.

    Args:
        assignments: (N,) cluster index of each development image, or its (N, K) cluster
            probabilities (argmax taken).
        y: (N, C) multi-hot labels in {0, 1} of the same images.
        k: number of clusters K.
        fallback: (C,) scores for clusters no image reaches; default the label prior y.mean(0).

    Returns:
        (K, C) float64 matrix; row k is the soft multi-label every image of cluster k receives.
    """
    y = _check_binary("y", y)
    assignments = np.asarray(assignments)
    if assignments.ndim == 2:
        assignments = assignments.argmax(axis=1)
    if assignments.shape != (len(y),):
        raise ValueError(f"assignments {assignments.shape} do not match {len(y)} labelled rows")
    if assignments.size and (assignments.min() < 0 or assignments.max() >= k):
        raise ValueError(f"cluster indices must lie in [0, {k})")
    if fallback is None:
        if len(y) == 0:
            raise ValueError("match_clusters: no labelled image and no fallback")
        fallback = y.mean(axis=0)
    fallback = np.asarray(fallback, dtype=np.float64)
    if fallback.shape != (y.shape[1],):
        raise ValueError(f"fallback must have shape ({y.shape[1]},), got {fallback.shape}")
    sums = np.zeros((k, y.shape[1]))
    np.add.at(sums, assignments.astype(np.int64), y.astype(np.float64))
    counts = np.bincount(assignments.astype(np.int64), minlength=k)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], fallback)


def nmi(labels_true, labels_pred) -> float:
    """Return the normalised mutual information (arithmetic mean normalisation, scikit-learn)."""
    return float(normalized_mutual_info_score(labels_true, labels_pred))


def ari(labels_true, labels_pred) -> float:
    """Return the adjusted Rand index (scikit-learn)."""
    return float(adjusted_rand_score(labels_true, labels_pred))


def hungarian_accuracy(labels_true, labels_pred) -> float:
    """Return the accuracy under the best one-to-one cluster → class mapping (Hungarian).

    Clusters left without a class (more clusters than classes) count as wrong.
    """
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError("hungarian_accuracy: expected two (N,) label arrays of equal length")
    if labels_true.size == 0:
        raise ValueError("hungarian_accuracy: no labels")
    table = contingency_matrix(labels_true, labels_pred)  # (classes, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels_true.size)
