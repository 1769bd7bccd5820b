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
        eval_every: evaluate every this many steps (0 = once per epoch).
        label_fraction: share of labelled exams used (nested by seed: 0.1 ⊂ 0.2 ⊂ ...).
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
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    workers: int = 1

    def __post_init__(self):
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction={self.label_fraction}: expected 0 < f <= 1")
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
    """

    epochs: int = 100
    k: int = 0
    min_combination_count: int = 2

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
        epochs: at most this many passes over the labelled exams.
        patience: stop after this many evaluations without validation gain (paper: 7).
    """

    epochs: int = 100
    patience: int = 7

    def __post_init__(self):
        _at_least(self, 1, "epochs")
        _at_least(self, 0, "patience")


@dataclass(frozen=True)
class FixMatchConfig:
    """Knobs of FixMatch (Sec. 2.3).

    Attributes:
        steps: optimisation steps (paper: 5 000; the best validation checkpoint is kept).
        tau: τ, confidence threshold above which a pseudo-label is used (0.95 in FixMatch).
        lambda_u: λ_u, weight of the unlabelled loss.
        unlabelled_exams: exams per unlabelled batch (16 in the paper).
    """

    steps: int = 5000
    tau: float = _label(0.95, "τ (FixMatch confidence threshold)")
    lambda_u: float = _label(1.0, "λ_u (weight of the unlabelled loss)")
    unlabelled_exams: int = 16

    def __post_init__(self):
        _at_least(self, 1, "steps", "unlabelled_exams")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau={self.tau}: expected 0 < τ <= 1")
        if self.lambda_u < 0:
            raise ConfigError(f"lambda_u={self.lambda_u}: expected >= 0")
