"""Mechanics two or more strategies share: which rows they train on, exam batches, scoring.

Scoring comes in two kinds, one per kind of head: ``MultilabelScoring`` (a C-way sigmoid head:
supervised and FixMatch) and ``ClusterScoring`` (a K-way ``cluster`` head mapped to labels by
Algorithm 1: every clustering method). ``TwoViewClustering`` is what the clustering methods
share besides their loss: two augmented views of unlabelled exam batches, the last epoch kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uslearn import augment, files, metrics
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.loader import load_batch
from uslearn.data.sampler import ExamBatchSampler
from uslearn.data.splits import labelled_from_ids, labelled_rows, labelled_subset
from uslearn.errors import UserError
from uslearn.strategies import evaluation
from uslearn.strategies.config import ClusteringConfig, TrainConfig
from uslearn.strategies.context import RunContext
from uslearn.strategies.distributed import gather_rows


@dataclass(frozen=True)
class Rows:
    """Dataset row indices of each role, and the labels of the labelled ones."""

    labelled: np.ndarray  # the label fraction's subset of the labelled split (drawn by exam)
    unlabelled: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, data: Dataset, label_fraction: float, seed: int, labelled_ids: str = "") -> Rows:
        """Return the rows of every role; raise UserError if validation or test is empty.

        ``labelled_ids`` (a file of image ids, ``TrainConfig.labelled_ids``) replaces the label
        fraction: the labelled split's other images join the unlabelled pool, labels unread.
        """
        # Unlabelled frames of labelled patients stay in their patient's split with labels -1
        # (docs/DATA.md): they join the unlabelled pool of that split's role, never evaluation.
        labelled_split = data.indices("labelled")
        unlabelled_frames = labelled_split[(data.labels[labelled_split] < 0).any(axis=1)]
        if labelled_ids:
            labelled = labelled_from_ids(data, labelled_ids)
            unlabelled_frames = np.setdiff1d(labelled_split, labelled)
        else:
            labelled = labelled_subset(data, label_fraction, seed)
        rows = cls(
            labelled=np.sort(labelled),
            unlabelled=np.sort(np.concatenate([data.indices("unlabelled"), unlabelled_frames])),
            val=labelled_rows(data, "val"),
            test=labelled_rows(data, "test"),
        )
        for role in ("val", "test"):
            if len(getattr(rows, role)) == 0:
                raise UserError(
                    f"{data.root}: the '{role}' split is empty; run 'uslearn data split' first"
                )
        return rows


def exam_sampler(
    data: Dataset, rows: np.ndarray, exams_per_batch: int, ctx: RunContext
) -> ExamBatchSampler:
    """Return the rank-aware exam batch sampler over ``rows`` (paper Sec. 3.2: batches of exams)."""
    if len(rows) == 0:
        raise UserError(f"{data.root}: no images to train on for strategy '{ctx.cfg.strategy}'")
    exam_ids = data.manifest["exam_id"].to_numpy()[rows]
    return ExamBatchSampler(
        exam_ids,
        rows,
        exams_per_batch,
        ctx.cfg.max_images_per_exam,
        ctx.cfg.seed,
        ctx.rank,
        ctx.world_size,
    )


def sampled_rows(sampler: ExamBatchSampler, start_step: int) -> Iterator[np.ndarray]:
    """Yield batches of rows forever, beginning at global step ``start_step`` (for resume)."""
    epoch, offset = divmod(start_step, len(sampler))
    while True:
        sampler.set_epoch(epoch)
        for index, rows in enumerate(sampler):
            if index >= offset:
                yield rows
        epoch, offset = epoch + 1, 0


def targets(data: Dataset, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Return the (B, C) float multi-hot targets of labelled ``rows`` on ``device``."""
    return torch.from_numpy(data.labels[rows].astype(np.float32)).to(device, non_blocking=True)


class Scoring:
    """What both kinds of scoring read: the data, the rows of each role and the run context."""

    data: Dataset
    rows: Rows
    ctx: RunContext

    def logits(self, model: torch.nn.Module, rows: np.ndarray, head: str) -> np.ndarray:
        """Return the (N, n) logits of ``head`` for dataset ``rows``, as the run sees them."""
        return evaluation.predict_logits(
            model,
            self.data,
            rows,
            head,
            self.ctx.cfg.image_size,
            self.ctx.device,
            self.ctx.amp_dtype,
        )


class MultilabelScoring(Scoring):
    """Validation and final evaluation through the sigmoid head (supervised and FixMatch)."""

    def scores(self, model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
        """Return the (N, C) sigmoid scores of the ``multilabel`` head."""
        return evaluation.sigmoid(self.logits(model, rows, "multilabel"))

    def validate(self, model: torch.nn.Module) -> float:
        """Return the weighted F1 on validation (thresholds fitted on validation)."""
        return evaluation.weighted_f1(
            self.scores(model, self.rows.val), self.data.labels[self.rows.val]
        )

    def finish(
        self, model: torch.nn.Module, out_dir: Path
    ) -> tuple[np.ndarray, pd.DataFrame, dict[str, float]]:
        """Return (validation-fitted thresholds, test report, extra metrics) of the kept model."""
        val_scores, test_scores = (
            self.scores(model, self.rows.val),
            self.scores(model, self.rows.test),
        )
        thresholds, report = evaluation.test_report(
            val_scores,
            self.data.labels[self.rows.val],
            test_scores,
            self.data.labels[self.rows.test],
        )
        return thresholds, report, {}


class ClusterScoring(Scoring):
    """Validation and final evaluation of a ``cluster`` head through Algorithm 1.

    Every development image (the paper's D: the run's labelled images by default, or the
    validation images) adds its multi-hot v to the row of its argmax cluster; rows divided
    by their counts give a soft multi-label v̂_k per cluster (a cluster no development image
    reaches gets the development set's label prior). Each val/test image is scored with its
    cluster's v̂, thresholds are fitted on validation and metrics reported on test, with NMI /
    ARI / Hungarian accuracy against the label-combination index.
    """

    combinations: metrics.LabelCombinations  # K from the labelled set (Sec. 2.2.3)
    k: int
    development: np.ndarray  # Algorithm 1's D: the labelled rows or the validation rows

    def assignments(self, model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
        """Return the (N,) argmax cluster of each of ``rows``."""
        return self.logits(model, rows, "cluster").argmax(axis=1)

    def cluster_labels(self, model: torch.nn.Module) -> np.ndarray:
        """Return Algorithm 1's (K, C) soft multi-labels from the development rows."""
        rows = self.development
        return metrics.match_clusters(self.assignments(model, rows), self.data.labels[rows], self.k)

    def validate(self, model: torch.nn.Module) -> float:
        """Return the weighted F1 on validation of Algorithm 1's cluster → multi-label scores."""
        soft_labels = self.cluster_labels(model)
        val_scores = soft_labels[self.assignments(model, self.rows.val)]
        return evaluation.weighted_f1(val_scores, self.data.labels[self.rows.val])

    def finish(
        self, model: torch.nn.Module, out_dir: Path
    ) -> tuple[np.ndarray, pd.DataFrame, dict[str, float]]:
        """Return thresholds, test report and NMI/ARI; write ``cluster_labels.csv``."""
        soft_labels = self.cluster_labels(model)
        val_clusters, test_clusters = (
            self.assignments(model, self.rows.val),
            self.assignments(model, self.rows.test),
        )
        y_val, y_test = self.data.labels[self.rows.val], self.data.labels[self.rows.test]
        thresholds, report = evaluation.test_report(
            soft_labels[val_clusters], y_val, soft_labels[test_clusters], y_test
        )
        truth = self.combinations.encode(y_test)
        extra = {
            "test/nmi": metrics.nmi(truth, test_clusters),
            "test/ari": metrics.ari(truth, test_clusters),
            "test/hungarian_accuracy": metrics.hungarian_accuracy(truth, test_clusters),
            "k": float(self.k),
        }
        table = pd.DataFrame(soft_labels, columns=list(CLASSES))
        labelled_clusters = self.assignments(model, self.rows.labelled)
        table.insert(0, "n_labelled", np.bincount(labelled_clusters, minlength=self.k))
        table.insert(0, "n_test", np.bincount(test_clusters, minlength=self.k))
        out_dir.mkdir(parents=True, exist_ok=True)
        files.write_text(
            out_dir / "cluster_labels.csv",
            table.to_csv(index_label="cluster"),
            "the clusters' labels",
        )
        return thresholds, report, extra


class TwoViewClustering(ClusterScoring):
    """A deep-clustering method's run: a K-way ``cluster`` head trained on two augmented views
    of every unlabelled exam batch for ``epochs``, the last epoch kept (Sec. 3.2), scored by
    Algorithm 1. Subclasses give ``step`` (their loss on the two views).

    K is the number of label combinations seen at least ``min_combination_count`` times in the
    labelled split (Sec. 2.2.3) unless ``k`` is given. A dataset without unlabelled images
    trains on the labelled ones, their labels ignored.
    """

    keep = "last"  # paper: the weights of the last epoch are evaluated
    patience = None
    min_steps = 0
    ema_decay = 0.0

    def __init__(self, cfg: TrainConfig, own: ClusteringConfig, data: Dataset, ctx: RunContext):
        self.cfg, self.own, self.data, self.ctx = cfg, own, data, ctx
        self.rows = Rows.of(data, cfg.label_fraction, cfg.seed, cfg.labelled_ids)
        train_rows = self.rows.unlabelled if len(self.rows.unlabelled) else self.rows.labelled
        self.sampler = exam_sampler(data, train_rows, cfg.batch_exams, ctx)
        self.combinations = metrics.label_combinations(
            data.labels[self.rows.labelled], min_count=own.min_combination_count
        )
        self.k = own.k or max(len(self.combinations), 2)
        self.development = self.rows.val if own.cluster_labels_from == "val" else self.rows.labelled
        self.heads = {"cluster": self.k}
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = own.epochs * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield both augmented views (x̃, x̂) of each unlabelled exam batch, stacked."""
        for rows in sampled_rows(self.sampler, start_step):
            images = load_batch(self.data.images, rows, device=self.ctx.device)
            view_a, view_b = augment.pica_views(
                images, self.cfg.image_size, self.ctx.generator, first_view=self.own.first_view
            )
            yield {"x": torch.cat([view_a, view_b]), "n_images": 2 * len(rows)}

    def view_log_probs(
        self, model: torch.nn.Module, batch: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (B, K) float32 cluster log-probabilities of views ·̃ and ·̂ of the global batch.

        Log-probabilities, not probabilities: the cluster-size priors need log z_k of nearly
        empty clusters without a floor (``losses.log_cluster_sizes``). Under DDP, B counts
        every rank's images: the clustering losses are statistics of the whole batch (PICA's M
        and Z, IIC's joint distribution), so the rows of all ranks are gathered,
        differentiably (``distributed.gather_rows``).
        """
        # Both views in one forward pass, so BatchNorm normalises them with the same statistics.
        log_probs = model(batch["x"])["cluster"].float().log_softmax(dim=1)  # (2B_r, K)
        log_p_a, log_p_b = log_probs.chunk(2)
        # One collective for both views: (B_r, 2K) on each rank → (B, 2K).
        both = gather_rows(torch.cat([log_p_a, log_p_b], dim=1))
        return both.split(log_p_a.shape[1], dim=1)


__all__ = [
    "CLASSES",
    "ClusterScoring",
    "MultilabelScoring",
    "Rows",
    "Scoring",
    "TwoViewClustering",
    "exam_sampler",
    "sampled_rows",
    "targets",
]
