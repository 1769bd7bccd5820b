"""Transfer learning / fine-tuning (paper Sec. 2.2.4; Strategy 1 of Fig. 1).

ResNet18 feature extractor f_θ initialised at random, from ImageNet or from a deep-clustering
checkpoint (its cluster head dropped), a C-way sigmoid head g_Φ, all weights trained jointly
with the multi-label BCE of Eq. 9 on the labelled exams of the label fraction. Early stopping
(``SupervisedConfig.early_stopping``): by default in optimiser steps (validation every
``eval_steps``, stop after ``patience_steps`` without gain, never before ``min_steps``), or the
paper's literal rule (``patience`` epochs); the best validation checkpoint is kept.
Differs from the paper: the images get the FixMatch weak augmentation (flip + small
translation), which the paper does not specify for supervised training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from uslearn import augment, losses
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.loader import load_batch
from uslearn.strategies.common import MultilabelScoring, Rows, exam_sampler, sampled_rows, targets
from uslearn.strategies.config import SupervisedConfig, TrainConfig
from uslearn.strategies.context import RunContext


class SupervisedStrategy(MultilabelScoring):
    """Binary cross-entropy on labelled exam batches (Eq. 9)."""

    keep = "best"
    ema_decay = 0.0

    def __init__(self, cfg: TrainConfig, own: SupervisedConfig, data: Dataset, ctx: RunContext):
        self.cfg, self.data, self.ctx = cfg, data, ctx
        self.rows = Rows.of(data, cfg.label_fraction, cfg.seed, cfg.labelled_ids)
        self.sampler = exam_sampler(data, self.rows.labelled, cfg.batch_exams, ctx)
        self.heads = {"multilabel": len(CLASSES)}
        self.steps_per_epoch = len(self.sampler)
        if own.early_stopping == "epochs":
            # The paper's literal rule: one validation per epoch, `patience` epochs. At 10 %
            # labels an epoch is one or two steps, so the run may stop after ~14 steps.
            self.eval_every = cfg.eval_every or self.steps_per_epoch
            self.patience, self.min_steps = own.patience, 0
            self.total_steps = own.epochs * self.steps_per_epoch
        else:
            # Cadence, patience and minimum length in optimiser steps: the same budget at
            # every label fraction.
            self.eval_every = cfg.eval_every or own.eval_steps
            self.patience = math.ceil(own.patience_steps / self.eval_every)
            self.min_steps = own.min_steps
            self.total_steps = max(own.epochs * self.steps_per_epoch, own.min_steps)

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield labelled batches: weakly augmented images and their multi-hot targets."""
        for rows in sampled_rows(self.sampler, start_step):
            images = load_batch(self.data.images, rows, device=self.ctx.device)
            x = augment.weak_view(images, self.cfg.image_size, self.ctx.generator)
            yield {"x": x, "y": targets(self.data, rows, self.ctx.device), "n_images": len(rows)}

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the BCE loss of one batch (Eq. 9) and no extra logs."""
        logits = model(batch["x"])["multilabel"]
        return losses.multilabel_bce(logits.float(), batch["y"]), {}


def build(
    cfg: TrainConfig, own: SupervisedConfig, data: Dataset, ctx: RunContext
) -> SupervisedStrategy:
    """Return the supervised strategy for this run."""
    return SupervisedStrategy(cfg, own, data, ctx)
