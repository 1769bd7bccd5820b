"""Configs of a training run: shared knobs (``TrainConfig``) plus each strategy's own.

They live here, away from the strategy files, so that the CLI, the study driver and the
analysis can read and validate a config without importing torch (3 s here).

Each field lives in the config of the code that reads it: a run logs exactly the fields of
``TrainConfig`` and of its strategy's own config (``registry.config_classes``), so a PICA run
logs no α and a FixMatch run no ``epochs``. Their union is one flat namespace (names are
unique within a strategy): MLflow params and Tune ``param_space`` keys.

A hyperparameter that a study may sweep carries a ``label`` in its field metadata (symbol and
meaning); figures take their axis labels from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from uslearn.config import ConfigError


def _label(default: float, label: str):
    """Return a dataclass field with a display label (symbol and meaning) for figures."""
    return field(default=default, metadata={"label": label})


@dataclass(frozen=True)
class TrainConfig:
    """Knobs every strategy reads.

    Attributes:
        strategy: a registry name (``registry.parse_config`` rejects any other).
        init: backbone initialisation: ``random``, ``imagenet`` or the path of a clustering
            checkpoint (a run directory or a ``.pt`` file).
        weights: explicit ImageNet state-dict file for ``init=imagenet`` ("" = torch hub cache).
        seed: seeds the model, sampler and augmentations.
        lr: Adam learning rate (paper: 1e-4, fixed).
        image_size: side length the network sees (stored images are resized on the device).
        batch_exams: exams per (labelled or clustering) batch (paper: 16 for unlabelled batches).
        max_images_per_exam: cap on the images drawn from one exam per batch (0 = all).
        eval_every: evaluate every this many steps (0 = the strategy's own cadence: once per
            epoch for clustering and for fine-tuning under the paper's epoch rule,
            ``SupervisedConfig.eval_steps`` under the step rule, ``FixMatchConfig.eval_steps``).
        label_fraction: share of labelled exams used (nested by seed: 0.1 ⊂ 0.2 ⊂ ...).
        labelled_ids: a file of image ids (one a line): the labelled images the run may use,
            the rest of the labelled split joining the unlabelled pool with its labels unread
            ("" = the label fraction's images; an active-learning round's revealed images).
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        compile: wrap the model in ``torch.compile``.
        workers: DDP workers of the run (set by the study runner; 1 = plain process).
    """

    strategy: str = "supervised"
    init: str = "random"
    weights: str = ""
    seed: int = 0
    lr: float = 1e-4
    image_size: int = 64
    batch_exams: int = 16
    max_images_per_exam: int = 16
    eval_every: int = 0
    label_fraction: float = 1.0
    labelled_ids: str = ""
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    workers: int = 1

    def __post_init__(self):
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction={self.label_fraction}: expected 0 < f <= 1")
        if self.labelled_ids and self.label_fraction != 1.0:
            raise ConfigError(
                f"labelled_ids={self.labelled_ids!r} with label_fraction={self.label_fraction}: "
                "the file names the labelled images; leave label_fraction at 1"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr}: expected > 0")
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size}: expected 16..1024")
        for name in ("batch_exams", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("eval_every", "max_images_per_exam"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: expected auto, cpu or cuda[:i]")

    @property
    def init_kind(self) -> str:
        """Return ``random``, ``imagenet`` or ``clustering`` (the arm an analysis groups by)."""
        return self.init if self.init in ("random", "imagenet") else "clustering"


def _at_least(config: object, minimum: int, *names: str) -> None:
    """Raise ConfigError naming the first of ``names`` whose value is below ``minimum``."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ConfigError(f"{name}={getattr(config, name)}: expected >= {minimum}")


@dataclass(frozen=True)
class ClusteringConfig:
    """Knobs every deep-clustering method reads (Sec. 2.2.3 and Algorithm 1).

    Attributes:
        epochs: passes over the unlabelled exams (paper: 100; the last epoch is kept).
        k: number of clusters; 0 = the number of label combinations in the labelled split
            that occur at least ``min_combination_count`` times.
        min_combination_count: rarer label combinations are not counted as clusters.
        first_view: the augmentation of view ·̃ (the view Z comes from; the paper's Sec. 2.2
            and Fig. 2 apply two *different* schemes ·̃ and ·̂). ``reduced`` (default): the
            official PICA code's transform of the "original" images, a random crop of 80 %
            of the side, no flip, no photometric change (``augment.reduced_view``);
            ``full``: the same pipeline as view ·̂ (random resized crop, flip, intensity
            jitter, blur or speckle; earlier uslearn versions).
        cluster_labels_from: the development set D of Algorithm 1 (the paper leaves it
            ambiguous): ``labelled`` (default: the labelled images of the run's label
            fraction) or ``val`` (the validation images, which also fit the thresholds).
    """

    epochs: int = 100
    k: int = 0
    min_combination_count: int = 2
    first_view: Literal["reduced", "full"] = "reduced"
    cluster_labels_from: Literal["labelled", "val"] = "labelled"

    def __post_init__(self):
        _at_least(self, 1, "epochs", "min_combination_count")
        if self.k < 0 or self.k == 1:
            raise ConfigError(f"k={self.k}: expected 0 (from label combinations) or >= 2")


@dataclass(frozen=True)
class PicaConfig(ClusteringConfig):
    """Knobs of PICA (Sec. 2.2.1): the clustering knobs plus the weight of its prior.

    Attributes:
        lam: λ, weight of the cluster-size prior L_NE (paper default 2).
    """

    lam: float = _label(2.0, "λ (weight of the cluster-size term)")

    def __post_init__(self):
        super().__post_init__()
        if self.lam < 0:
            raise ConfigError(f"lam={self.lam}: expected >= 0")


@dataclass(frozen=True)
class LsdConfig(PicaConfig):
    """Knobs of LSD (Sec. 2.2.2): PICA's, with the Dirichlet prior L_SD(α) in place of L_NE.

    Attributes:
        alpha: α of the symmetric Dirichlet prior (1 + ε; the paper asks for a sweep).
    """

    alpha: float = _label(1.05, "α (Dirichlet concentration of the LSD prior)")

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0:
            raise ConfigError(f"alpha={self.alpha}: expected > 0 (1 + ε in the paper)")


@dataclass(frozen=True)
class SupervisedConfig:
    """Knobs of fine-tuning (Sec. 2.2.4).

    Attributes:
        epochs: at most this many passes over the labelled exams (under the step rule the run
            is extended to ``min_steps`` when these passes are fewer steps).
        patience: under the epoch rule, stop after this many evaluations (one per epoch)
            without validation gain (paper: 7).
        early_stopping: ``steps`` (default): validation every ``eval_steps`` optimiser steps,
            stop once ``patience_steps`` steps passed without a gain, never before
            ``min_steps``; the same budget at every label fraction. ``epochs``: the paper's
            literal rule (validation once per epoch, ``patience`` epochs), under which a 10 %
            label fraction of 16-exam batches stops after about 14 steps.
        eval_steps: optimiser steps between validations under the step rule (when the
            shared ``eval_every`` is 0).
        patience_steps: under the step rule, stop after this many steps without validation
            gain (100 ≈ the paper's 7 epochs of 14 steps at 100 % labels).
        min_steps: under the step rule, the run lasts and is never stopped before this many
            steps.
    """

    epochs: int = 100
    patience: int = 7
    early_stopping: Literal["steps", "epochs"] = "steps"
    eval_steps: int = 10
    patience_steps: int = 100
    min_steps: int = 300

    def __post_init__(self):
        _at_least(self, 1, "epochs", "eval_steps", "patience_steps")
        _at_least(self, 0, "patience", "min_steps")


@dataclass(frozen=True)
class FixMatchConfig:
    """Knobs of FixMatch (Sec. 2.3).

    The paper leaves μ, λ_u and the EMA open; the defaults are its literal protocol (16
    unlabelled exams per step, λ in Eq. 13 = 1, plain Adam weights evaluated), the reference
    FixMatch's values are μ = 7, λ_u = 1 and an EMA decay of 0.999.

    Attributes:
        steps: optimisation steps (paper: 5 000; the best validation checkpoint is kept).
        tau: τ, confidence threshold above which a pseudo-label is used (0.95 in FixMatch).
        lambda_u: λ_u, weight of the unlabelled loss (Eq. 13's λ; 1 as in FixMatch).
        unlabelled_exams: exams per unlabelled batch (16 in the paper); ignored when mu > 0.
        mu: μ, unlabelled exams per labelled exam in a step (0 = take ``unlabelled_exams``;
            reference FixMatch: 7 unlabelled images per labelled image).
        ema_decay: decay of an exponential moving average of the weights that is validated,
            kept and tested instead of the raw weights (0 = off, the paper; FixMatch: 0.999).
        eval_steps: optimiser steps between validations (when the shared ``eval_every`` is
            0): a fixed cadence, whatever the label fraction (5 000 / 50 = 100 validations).
    """

    steps: int = 5000
    tau: float = _label(0.95, "τ (FixMatch confidence threshold)")
    lambda_u: float = _label(1.0, "λ_u (weight of the unlabelled loss)")
    unlabelled_exams: int = 16
    mu: float = 0.0
    ema_decay: float = 0.0
    eval_steps: int = 50

    def __post_init__(self):
        _at_least(self, 1, "steps", "unlabelled_exams", "eval_steps")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau={self.tau}: expected 0 < τ <= 1")
        if self.lambda_u < 0:
            raise ConfigError(f"lambda_u={self.lambda_u}: expected >= 0")
        if self.mu < 0:
            raise ConfigError(f"mu={self.mu}: expected >= 0 (0 = use unlabelled_exams)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay}: expected 0 (off) <= decay < 1")

    def unlabelled_batch_exams(self, labelled_exams: int) -> int:
        """Return the exams of one unlabelled batch: μ × ``labelled_exams``, or ``unlabelled_exams``."""
        return max(1, round(self.mu * labelled_exams)) if self.mu > 0 else self.unlabelled_exams
