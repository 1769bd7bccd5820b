"""The acquisition functions on hand-made pools whose right answer is known."""

import numpy as np
import pytest

from uslearn.acquisition import ENTRIES, Pool, groups_of, select, take
from uslearn.acquisition.entropy import mean_binary_entropy
from uslearn.acquisition.uncertainty import threshold_margin
from uslearn.config import ConfigError


def full_pool(n: int = 12, seed: int = 0) -> Pool:
    """Return a pool with every field filled (random values), 3 images per exam."""
    rng = np.random.default_rng(seed)
    return Pool(
        group=np.repeat(np.arange(n // 3), 3),
        scores=rng.uniform(size=(n, 7)),
        thresholds=np.full(7, 0.5),
        features=rng.normal(size=(n, 4)),
        labelled_features=rng.normal(size=(2, 4)),
        clusters=rng.integers(0, 3, n),
        cluster_probs=rng.dirichlet(np.ones(3), n),
        cluster_features=rng.normal(size=(n, 4)),
    )


def test_take_counts_groups_and_returns_every_image_of_a_picked_exam():
    group = np.array(["a", "a", "b", "c", "c", "c"])
    # The order wants image 4 (exam c) first, then image 2 (exam b).
    assert take(np.array([4, 2, 0, 1, 3, 5]), group, 2).tolist() == [2, 3, 4, 5]
    assert take(np.array([4, 2, 0, 1, 3, 5]), np.arange(6), 2).tolist() == [2, 4]
    assert take(np.array([0, 1, 2, 3, 4, 5]), group, 10).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="budget 0"):
        take(np.arange(6), group, 0)
    with pytest.raises(ConfigError, match="budget unit 'frames'"):
        groups_of(group, "frames")


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_function_is_deterministic_given_a_seed_and_respects_the_budget(name):
    pool = full_pool()
    picks = select(name, pool, 2, seed=3)
    assert picks.tolist() == select(name, pool, 2, seed=3).tolist()
    assert len(np.unique(pool.group[picks])) == 2  # two exams, all their images
    assert len(picks) == 6


def test_random_draws_exams_uniformly_not_by_their_size():
    # Exam 0 has 9 images, exam 1 one: by exam, each is first half of the time.
    group = np.array([0] * 9 + [1])
    firsts = [select("random", Pool(group=group), 1, seed=s)[0] for s in range(400)]
    share_small = np.mean([f == 9 for f in firsts])
    assert 0.4 < share_small < 0.6
    assert len({tuple(select("random", Pool(group=np.arange(10)), 3, s)) for s in range(5)}) > 1


def test_mean_binary_entropy_is_log2_at_one_half_and_zero_when_certain():
    scores = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 1.0]])
    assert mean_binary_entropy(scores) == pytest.approx([np.log(2), 0.0, np.log(2) / 2], abs=1e-9)
    pool = Pool(group=np.arange(3), scores=scores)
    assert select("entropy", pool, 1, 0).tolist() == [0]
    assert select("entropy", pool, 2, 0).tolist() == [0, 2]


def test_threshold_margin_measures_the_distance_to_each_class_threshold_on_the_logit_scale():
    thresholds = np.array([0.9, 0.1, np.inf])  # the third class is never predicted
    scores = np.array(
        [
            [0.9, 0.9, 0.5],  # on the first threshold: margin 0
            [0.5, 0.5, 0.5],  # logit 0 vs logit(0.9) = 2.197 and logit(0.1) = -2.197
            [0.95, 0.01, 0.5],  # 0.95 vs 0.9: logit gap log 19 - log 9 = 0.75
        ]
    )
    margin = threshold_margin(scores, thresholds)
    logit9 = np.log(9.0)
    assert margin == pytest.approx([0.0, logit9, np.log(19.0) - logit9], abs=1e-6)
    pool = Pool(group=np.arange(3), scores=scores, thresholds=thresholds)
    # The most uncertain are 0 then 2 (0.95 vs 0.9 is closer in logits than 0.5 vs 0.9).
    assert select("uncertainty", pool, 2, 0).tolist() == [0, 2]


def test_coreset_picks_the_point_farthest_from_the_labelled_ones_then_covers_the_rest():
    # Candidates on a line at 0, 3, 10, 11, 20; one image labelled at 0.
    feats = np.array([[0.0], [3.0], [10.0], [11.0], [20.0]])
    pool = Pool(group=np.arange(5), features=feats, labelled_features=np.array([[0.0]]))
    assert select("coreset", pool, 1, 0).tolist() == [4]  # 20 is farthest from 0
    assert select("coreset", pool, 2, 0).tolist() == [2, 4]  # then 10 (10 from 0, 10 from 20)
    # By exam: 11 and 20 share an exam, so 11 becomes a centre with 20; 10 is then 1 away
    # from a centre and 3 (3 from 0) is the farthest.
    by_exam = Pool(
        group=np.array([0, 1, 2, 3, 3]), features=feats, labelled_features=np.array([[0.0]])
    )
    assert select("coreset", by_exam, 1, 0).tolist() == [3, 4]
    assert select("coreset", by_exam, 2, 0).tolist() == [1, 3, 4]


def test_cluster_spreads_over_clusters_and_proposed_label_sets_before_repeating_one():
    # Clusters: 0 (images 0-3), 1 (images 4-5). The classifier splits cluster 0 into two label
    # sets ({liver} for 0-1, {kidney} for 2-3): three strata, so the first three picks cover
    # all three strata, although cluster 0 is twice the size of cluster 1.
    clusters = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.55, 0.45], [0.3, 0.7], [0.1, 0.9]])
    scores = np.zeros((6, 2))
    scores[[0, 1], 0] = 1.0
    scores[[2, 3], 1] = 1.0
    pool = Pool(
        group=np.arange(6),
        scores=scores,
        thresholds=np.array([0.5, 0.5]),
        clusters=clusters,
        cluster_probs=probs,
        cluster_features=np.array([[1, 0], [1, 0.2], [1, 0], [1, 0.1], [0, 1], [0, 1.0]]),
    )
    picks = select("cluster", pool, 3, 0)
    assert sorted(set(pool.clusters[picks])) == [0, 1]
    # Within each stratum the most ambiguous image (smallest margin p1 - p2) goes first.
    assert picks.tolist() == [1, 3, 4]
    # Without a classifier (round 0) the strata are the clusters: one pick from each.
    bare = Pool(
        group=np.arange(6),
        clusters=clusters,
        cluster_probs=probs,
        cluster_features=pool.cluster_features,
    )
    assert sorted(pool.clusters[select("cluster", bare, 2, 0)]) == [0, 1]


def test_a_function_without_what_it_needs_fails_with_one_line():
    with pytest.raises(ConfigError, match="'coreset' needs the pool's features"):
        select("coreset", Pool(group=np.arange(3)), 1, 0)
    with pytest.raises(ConfigError, match="acquisition 'bald': expected one of"):
        select("bald", Pool(group=np.arange(3)), 1, 0)


def test_acquisition_imports_no_torch():
    import subprocess
    import sys

    code = "import uslearn.acquisition, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
