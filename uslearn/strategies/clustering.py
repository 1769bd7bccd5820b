"""Deep clustering: PICA (paper Sec. 2.2.1) and its Dirichlet-prior variant LSD (Sec. 2.2.2).

Two augmented views of every unlabelled exam batch go through f_θ and the K-way cluster head
g_τ; the loss is the partition-confusion cross-entropy L_CE (Eq. 1–3) plus λ times a prior on
the batch's cluster-size distribution Z: PICA's L_NE (Eq. 4) or LSD's L_SD(α) (Eq. 6–7).
K is the number of label combinations seen in the labelled split (Sec. 2.2.3) unless given.
Trained for a fixed number of epochs; the last epoch is kept.

Evaluation (Algorithm 1): every labelled image adds its multi-hot v to the row of its argmax
cluster; rows divided by their counts give a soft multi-label v̂_k per cluster (clusters no
labelled image reaches get the labelled set's label prior). Each val/test image is scored with
its cluster's v̂, thresholds are fitted on validation, metrics reported on test, plus NMI / ARI
/ Hungarian accuracy against the label-combination index.
Differs from the official PICA code: two augmented views (as the paper), no Sobel front end,
one perturbation per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uslearn import augment, losses, metrics
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.loader import load_batch
from uslearn.strategies import evaluation
from uslearn.strategies.common import Rows, exam_sampler, sampled_rows
from uslearn.strategies.config import ClusteringConfig, TrainConfig
from uslearn.strategies.distributed import gather_rows
from uslearn.strategies.loop import Context


class ClusteringStrategy:
    """PICA (prior="entropy") or LSD (prior="dirichlet") on unlabelled exam batches."""

    keep = "last"  # paper: weights of the last epoch are evaluated
    early_stopping = False

    def __init__(self, cfg: TrainConfig, own: ClusteringConfig, data: Dataset, ctx: Context):
        self.cfg, self.own, self.data, self.ctx = cfg, own, data, ctx
        self.prior = {"pica": "entropy", "lsd": "dirichlet"}[cfg.strategy]
        self.rows = Rows.of(data, cfg.label_fraction, cfg.seed)
        # Paper: trained on the unlabelled set; a dataset without one trains on the labelled
        # images with their labels ignored.
        train_rows = self.rows.unlabelled if len(self.rows.unlabelled) else self.rows.labelled
        self.sampler = exam_sampler(data, train_rows, cfg.batch_exams, ctx)
        self.combinations = metrics.label_combinations(
            data.labels[self.rows.labelled], min_count=own.min_combination_count
        )
        self.k = own.k or max(len(self.combinations), 2)
        self.heads = {"cluster": self.k}
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the two augmented views (x̃, x̂) of each unlabelled exam batch."""
        for rows in sampled_rows(self.sampler, start_step):
            images = load_batch(self.data.images, rows, device=self.ctx.device)
            view_a, view_b = augment.pica_views(images, self.cfg.image_size, self.ctx.generator)
            yield {"x": torch.cat([view_a, view_b]), "n_images": 2 * len(rows)}

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return L_CE + λ·prior (Eq. 3 + 4, or Eq. 7) and its parts."""
        # Both views in one forward pass, so BatchNorm normalises them with the same statistics.
        probs = model(batch["x"])["cluster"].float().softmax(dim=1)  # (2B, K)
        probs_a, probs_b = probs.chunk(2)
        # M and Z are statistics of the whole batch: under DDP, of every rank's images
        # (one collective for both views: (B_r, 2K) → (B, 2K)).
        both = gather_rows(torch.cat([probs_a, probs_b], dim=1))
        probs_a, probs_b = both.split(self.k, dim=1)
        loss, parts = losses.pica_loss(
            probs_a, probs_b, self.own.lam, prior=self.prior, alpha=self.own.alpha
        )
        return loss, {"loss_ce": parts["ce"], "loss_prior": parts["prior"]}

    def _assignments(self, model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
        logits = evaluation.predict_logits(
            model,
            self.data,
            rows,
            "cluster",
            self.cfg.image_size,
            self.ctx.device,
            self.ctx.amp_dtype,
        )
        return logits.argmax(axis=1)

    def cluster_labels(self, model: torch.nn.Module) -> np.ndarray:
        """Return Algorithm 1's (K, C) soft multi-labels from the labelled rows."""
        labelled = self.rows.labelled
        return metrics.match_clusters(
            self._assignments(model, labelled), self.data.labels[labelled], self.k
        )

    def _scores(
        self, model: torch.nn.Module, soft_labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        test_clusters = self._assignments(model, self.rows.test)
        return (
            soft_labels[self._assignments(model, self.rows.val)],
            soft_labels[test_clusters],
            test_clusters,
        )

    def validate(self, model: torch.nn.Module) -> float:
        """Return the weighted F1 on validation of Algorithm 1's cluster → multi-label scores."""
        val_scores, _, _ = self._scores(model, self.cluster_labels(model))
        return evaluation.weighted_f1(val_scores, self.data.labels[self.rows.val])

    def finish(
        self, model: torch.nn.Module, out_dir: Path
    ) -> tuple[np.ndarray, pd.DataFrame, dict[str, float]]:
        """Return thresholds, test report and NMI/ARI; write ``cluster_labels.csv``."""
        soft_labels = self.cluster_labels(model)
        val_scores, test_scores, test_clusters = self._scores(model, soft_labels)
        y_val, y_test = self.data.labels[self.rows.val], self.data.labels[self.rows.test]
        thresholds, report = evaluation.test_report(val_scores, y_val, test_scores, y_test)
        truth = self.combinations.encode(y_test)
        extra = {
            "test/nmi": metrics.nmi(truth, test_clusters),
            "test/ari": metrics.ari(truth, test_clusters),
            "test/hungarian_accuracy": metrics.hungarian_accuracy(truth, test_clusters),
            "k": float(self.k),
        }
        table = pd.DataFrame(soft_labels, columns=list(CLASSES))
        table.insert(
            0,
            "n_labelled",
            np.bincount(self._assignments(model, self.rows.labelled), minlength=self.k),
        )
        table.insert(0, "n_test", np.bincount(test_clusters, minlength=self.k))
        out_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_dir / "cluster_labels.csv", index_label="cluster")
        return thresholds, report, extra


def build(
    cfg: TrainConfig, own: ClusteringConfig, data: Dataset, ctx: Context
) -> ClusteringStrategy:
    """Return the PICA or LSD strategy for this run (chosen by ``cfg.strategy``)."""
    return ClusteringStrategy(cfg, own, data, ctx)
