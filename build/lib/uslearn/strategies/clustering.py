"""Deep clustering: PICA (paper Sec. 2.2.1) and its Dirichlet-prior variant LSD (Sec. 2.2.2).

Two augmented views of every unlabelled exam batch go through f_θ and the K-way cluster head
g_τ; the loss is the partition-confusion cross-entropy L_CE (Eq. 1–3) plus λ times a prior on
the batch's cluster-size distribution Z: PICA's L_NE (Eq. 4) or LSD's L_SD(α) (Eq. 6–7).
What every clustering method shares (the views, K from the label combinations, the last
epoch kept, Algorithm 1's evaluation) is ``common.TwoViewClustering``.
Differs from the official PICA code: two augmented views (as the paper), no Sobel front end,
one perturbation per image.
"""

from __future__ import annotations

import torch

from uslearn import losses
from uslearn.data.dataset import Dataset
from uslearn.strategies.common import TwoViewClustering
from uslearn.strategies.config import LsdConfig, PicaConfig, TrainConfig
from uslearn.strategies.context import RunContext


class ClusteringStrategy(TwoViewClustering):
    """PICA, or LSD when its config carries LSD's α."""

    def __init__(self, cfg: TrainConfig, own: PicaConfig, data: Dataset, ctx: RunContext):
        super().__init__(cfg, own, data, ctx)
        # LsdConfig extends PicaConfig with α: the Dirichlet prior replaces L_NE (Sec. 2.2.2).
        self.prior, self.alpha = (
            ("dirichlet", own.alpha) if isinstance(own, LsdConfig) else ("entropy", 1.0)
        )

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return L_CE + λ·prior (Eq. 3 + 4, or Eq. 7) and its parts."""
        log_p_a, log_p_b = self.view_log_probs(model, batch)
        loss, parts = losses.pica_loss(
            log_p_a, log_p_b, self.own.lam, prior=self.prior, alpha=self.alpha
        )
        return loss, {"loss_ce": parts["ce"], "loss_prior": parts["prior"]}


def build(cfg: TrainConfig, own: PicaConfig, data: Dataset, ctx: RunContext) -> ClusteringStrategy:
    """Return the PICA or LSD strategy for this run (chosen by the type of ``own``)."""
    return ClusteringStrategy(cfg, own, data, ctx)
