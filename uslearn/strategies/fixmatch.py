"""FixMatch for multi-label classification (paper Sec. 2.3; Strategies 3 and 4 of Fig. 1).

Each step takes a labelled exam batch and an unlabelled exam batch (16 exams in the paper);
labelled, weak and strong images go through the network in ONE forward pass, so BatchNorm sees
them together (as the reference FixMatch). The loss is L_s + λ_u·L_u (Eq. 13):

- One-Head (``fixmatch_one``): a C-way sigmoid head; pseudo-label ỹ_c = 1[p̃_c ≥ 0.5] from the
  weak view, an image kept if max_c p̃_c ≥ τ, BCE of the strong view towards ỹ on kept images.
  Known weakness: every class under 0.5 becomes a confident negative.
- Two-Head (``fixmatch_two``): a K-way softmax head over the label combinations of the labelled
  set trained with single-label FixMatch (Eq. 12) plus CE on the labelled combination index w,
  and a C-way sigmoid head trained with BCE (Eq. 9) on labelled images. Predictions come from
  the sigmoid head. A labelled combination is a class of the softmax head; unseen combinations
  cannot occur in the labelled targets by construction.

Fixed number of steps; validation every ``eval_steps`` steps (``eval_every`` overrides it);
the best validation checkpoint is kept. Init from ImageNet or a deep-clustering checkpoint
gives Strategy 4. The knobs the paper leaves open are options whose defaults are its literal
protocol: μ (``mu``; default: ``unlabelled_exams`` = 16 exams per step), λ_u (``lambda_u`` = 1)
and an EMA of the weights for evaluation (``ema_decay``; default off). Differs from the
reference: no weight-decay split (Adam 1e-4 fixed, as the paper's protocol).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from uslearn import augment, losses, metrics
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.loader import load_batch
from uslearn.strategies.common import MultilabelScoring, Rows, exam_sampler, sampled_rows, targets
from uslearn.strategies.config import FixMatchConfig, TrainConfig
from uslearn.strategies.context import RunContext


class FixMatchStrategy(MultilabelScoring):
    """One-Head or Two-Head FixMatch, chosen by ``cfg.strategy``."""

    keep = "best"
    patience = None  # paper: a fixed number of steps
    min_steps = 0

    def __init__(self, cfg: TrainConfig, own: FixMatchConfig, data: Dataset, ctx: RunContext):
        self.cfg, self.own, self.data, self.ctx = cfg, own, data, ctx
        self.two_head = cfg.strategy == "fixmatch_two"
        self.ema_decay = own.ema_decay
        self.rows = Rows.of(data, cfg.label_fraction, cfg.seed, cfg.labelled_ids)
        self.labelled_sampler = exam_sampler(data, self.rows.labelled, cfg.batch_exams, ctx)
        self.unlabelled_sampler = exam_sampler(
            data, self.rows.unlabelled, own.unlabelled_batch_exams(cfg.batch_exams), ctx
        )
        self.heads = {"multilabel": len(CLASSES)}
        if self.two_head:
            self.combinations = metrics.label_combinations(
                data.labels[self.rows.labelled], min_count=1
            )
            self.heads["combo"] = len(self.combinations)
        self.steps_per_epoch = len(self.labelled_sampler)
        self.total_steps = own.steps
        # A fixed cadence in steps: once per labelled epoch would mean ~2 500 validations
        # in 5 000 steps at 10 % labels.
        self.eval_every = cfg.eval_every or own.eval_steps

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield labelled (weak view, targets) + unlabelled (weak, strong views) batches."""
        device, gen, size = self.ctx.device, self.ctx.generator, self.cfg.image_size
        unlabelled = sampled_rows(self.unlabelled_sampler, start_step)
        for rows_lb in sampled_rows(self.labelled_sampler, start_step):
            rows_ulb = next(unlabelled)
            images_lb = load_batch(self.data.images, rows_lb, device=device)
            images_ulb = load_batch(self.data.images, rows_ulb, device=device)
            x = torch.cat(
                [
                    augment.weak_view(images_lb, size, gen),
                    augment.weak_view(images_ulb, size, gen),
                    augment.strong_view(images_ulb, size, gen),
                ]
            )
            batch = {
                "x": x,
                "y": targets(self.data, rows_lb, device),
                "n_lb": len(rows_lb),
                "n_images": len(rows_lb) + 2 * len(rows_ulb),
            }
            if self.two_head:
                batch["w"] = torch.from_numpy(
                    self.combinations.encode(self.data.labels[rows_lb])
                ).to(device)
            yield batch

    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return L_s + λ_u·L_u (Eq. 13 / Sec. 2.3.2) and its parts, with the mask rate."""
        n_lb = batch["n_lb"]
        logits = {name: value.float() for name, value in model(batch["x"]).items()}
        ml_lb = logits["multilabel"][:n_lb]
        if not self.two_head:
            weak, strong = logits["multilabel"][n_lb:].chunk(2)
            loss_sup = losses.multilabel_bce(ml_lb, batch["y"])
            loss_unsup, mask_rate = losses.fixmatch_one_head_loss(weak, strong, self.own.tau)
            loss = loss_sup + self.own.lambda_u * loss_unsup
            return loss, {"loss_sup": loss_sup, "loss_unsup": loss_unsup, "mask_rate": mask_rate}
        weak, strong = logits["combo"][n_lb:].chunk(2)
        loss, parts = losses.fixmatch_two_head_loss(
            logits["combo"][:n_lb],
            batch["w"],
            ml_lb,
            batch["y"],
            weak,
            strong,
            self.own.tau,
            self.own.lambda_u,
        )
        return loss, {
            "loss_sup": parts["sup_combo"] + parts["sup_bce"],
            "loss_unsup": parts["unsup"],
            "mask_rate": parts["mask_rate"],
        }


def build(
    cfg: TrainConfig, own: FixMatchConfig, data: Dataset, ctx: RunContext
) -> FixMatchStrategy:
    """Return the One-Head or Two-Head FixMatch strategy for this run."""
    return FixMatchStrategy(cfg, own, data, ctx)
