"""``cluster``: spread the picks over what the deep-clustering model found (the paper's idea:
a clustering of the unlabelled mountain tells the annotators where to look).

Strata = (deep-clustering cluster, label combination the current classifier proposes), so a
cluster that the classifier splits into two label sets is sampled on both sides. The strata
take turns, largest first; within a stratum the image with the highest ``uslearn curate``
priority goes first,

    priority_i = max( pct(1 - (p1_i - p2_i)),  pct(d_i) )

with p1, p2 the two largest cluster probabilities, d_i the cosine distance of the image's
clustering features to the nearest cluster centre and pct the percentile over the pool
(``spread.curate_priority``), and an exam already in the list is passed over while a stratum
has images of a new one (``spread.spread_ranking``, curate's to-label ranking).
Before any classifier exists (round 0) the strata are the clusters alone.
"""

from __future__ import annotations

import numpy as np

from uslearn.acquisition.pool import Pool
from uslearn.acquisition.spread import curate_priority, nearest_centre_distance, spread_ranking


def strata(clusters: np.ndarray, scores: np.ndarray | None, thresholds: np.ndarray | None):
    """Return (N,) stratum ids: the cluster, joined with the proposed label set when scored."""
    clusters = np.asarray(clusters, dtype=np.int64)
    if scores is None or thresholds is None:
        return clusters
    proposed = np.asarray(scores) >= np.asarray(thresholds)[None, :]  # (N, C) label sets
    code = proposed.astype(np.int64) @ (1 << np.arange(proposed.shape[1]))  # bit pattern
    _, stratum = np.unique(np.stack([clusters, code], axis=1), axis=0, return_inverse=True)
    return stratum.ravel()


def rank(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Return every position: strata in turn, curate's priority within each, new exams first."""
    pool.need("cluster", "clusters", "cluster_probs", "cluster_features")
    distance = nearest_centre_distance(
        np.asarray(pool.cluster_features, dtype=np.float64), pool.clusters
    )
    priority = curate_priority(pool.cluster_probs, distance)
    stratum = strata(pool.clusters, pool.scores, pool.thresholds)
    return np.asarray(spread_ranking(priority, stratum, np.asarray(pool.group), len(pool)))
