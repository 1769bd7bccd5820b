"""Mechanics two or more strategies share: which rows they train on, exam batches, scoring."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.sampler import ExamBatchSampler
from uslearn.data.splits import labelled_rows, labelled_subset
from uslearn.errors import UserError
from uslearn.strategies import evaluation
from uslearn.strategies.loop import Context


@dataclass(frozen=True)
class Rows:
    """Dataset row indices of each role, and the labels of the labelled ones."""

    labelled: np.ndarray  # the label fraction's subset of the labelled split (drawn by exam)
    unlabelled: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, data: Dataset, label_fraction: float, seed: int) -> Rows:
        """Return the rows of every role; raise UserError if validation or test is empty."""
        # Unlabelled frames of labelled patients stay in their patient's split with labels -1
        # (docs/DATA.md): they join the unlabelled pool of that split's role, never evaluation.
        labelled_split = data.indices("labelled")
        unlabelled_frames = labelled_split[(data.labels[labelled_split] < 0).any(axis=1)]
        rows = cls(
            labelled=np.sort(labelled_subset(data, label_fraction, seed)),
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
    data: Dataset, rows: np.ndarray, exams_per_batch: int, ctx: Context
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


class MultilabelScoring:
    """Validation and final evaluation through the sigmoid head (supervised and FixMatch)."""

    data: Dataset
    rows: Rows
    ctx: Context

    def scores(self, model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
        """Return the (N, C) sigmoid scores of the ``multilabel`` head."""
        logits = evaluation.predict_logits(
            model,
            self.data,
            rows,
            "multilabel",
            self.ctx.cfg.image_size,
            self.ctx.device,
            self.ctx.amp_dtype,
        )
        return 1.0 / (1.0 + np.exp(-logits))

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


__all__ = ["CLASSES", "MultilabelScoring", "Rows", "exam_sampler", "sampled_rows", "targets"]
