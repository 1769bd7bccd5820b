"""IIC: Invariant Information Clustering (Ji, Henriques, Vedaldi, ICCV 2019, arXiv:1807.06653).

A deep-clustering method beyond the paper, which the PICA paper compares against. Two augmented
views of every unlabelled exam batch go through f_θ and the K-way cluster head; the loss is
minus the mutual information I(z, z') between the two views' cluster assignments, computed from
their symmetrised joint distribution P = (1/N) Σ φ(x) φ(x')ᵀ (their Eq. 3, ``losses.iic_loss``).
I(z, z') = H(z) − H(z | z') rewards views that agree and clusters that are all used, so the
cluster-size prior that PICA and LSD add with a weight λ is built in: IIC has no λ.
What it shares with PICA and LSD (the two views, K from the label combinations, the last epoch
kept, Algorithm 1's evaluation) is ``common.TwoViewClustering``; its knobs are the shared
``ClusteringConfig``.
Differs from the reference code: two augmented views of each image (as our PICA) instead of
an image and one perturbation of it; one head, no over-clustering head and no Sobel front end;
the plain objective (its entropy weight ``lamb`` = 1); ε only inside the logarithms.
"""

from __future__ import annotations

import torch

from uslearn import losses
from uslearn.data.dataset import Dataset
from uslearn.strategies.common import TwoViewClustering
from uslearn.strategies.config import ClusteringConfig, TrainConfig
from uslearn.strategies.context import RunContext


class IicStrategy(TwoViewClustering):
    """IIC on unlabelled exam batches."""

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return −I(z, z') (their Eq. 3), with I and the entropy of the cluster sizes to log."""
        log_p_a, log_p_b = self.view_log_probs(model, batch)
        loss, parts = losses.iic_loss(log_p_a, log_p_b)
        return loss, {"mutual_information": parts["mi"], "cluster_entropy": parts["entropy"]}


def build(cfg: TrainConfig, own: ClusteringConfig, data: Dataset, ctx: RunContext) -> IicStrategy:
    """Return the IIC strategy for this run."""
    return IicStrategy(cfg, own, data, ctx)
