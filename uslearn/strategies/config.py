"""Configs of a training run: shared knobs (``TrainConfig``) plus each strategy's own.

They live here, away from the strategy files, so that the CLI and the study driver can
validate a config without importing torch (3 s here).

One flat namespace (``flatten`` of the configs a strategy uses) is what MLflow params and Tune
``param_space`` keys are; ``parse_config`` splits such a flat dict back, rejecting unknown keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from uslearn.config import ConfigError, split_flat

STRATEGY_NAMES = ("pica", "lsd", "supervised", "fixmatch_one", "fixmatch_two")


@dataclass(frozen=True)
class TrainConfig:
    """Knobs every strategy shares.

    Attributes:
        strategy: one of STRATEGY_NAMES.
        init: backbone initialisation: ``random``, ``imagenet`` or the path of a clustering
            checkpoint (a run directory or a ``.pt`` file).
        weights: explicit ImageNet state-dict file for ``init=imagenet`` ("" = torch hub cache).
        seed: seeds the model, sampler and augmentations.
        lr: Adam learning rate (paper: 1e-4, fixed).
        image_size: side length the network sees (stored images are resized on the device).
        batch_exams: exams per batch (paper: 16 for unlabelled batches).
        max_images_per_exam: cap on the images drawn from one exam per batch (0 = all).
        epochs: epochs for epoch-based strategies (clustering: 100 in the paper; supervised: the cap).
        steps: optimisation steps for step-based strategies (FixMatch: 5 000 in the paper).
        eval_every: evaluate every this many steps (0 = once per epoch).
        patience: early stopping after this many evaluations without validation gain (supervised).
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
    epochs: int = 100
    steps: int = 5000
    eval_every: int = 0
    patience: int = 7
    label_fraction: float = 1.0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    workers: int = 1

    def __post_init__(self):
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"strategy={self.strategy!r}: expected one of {list(STRATEGY_NAMES)}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction={self.label_fraction}: expected 0 < f <= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr}: expected > 0")
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size}: expected 16..1024")
        for name in ("batch_exams", "epochs", "steps", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("eval_every", "patience", "max_images_per_exam"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: expected auto, cpu or cuda[:i]")

    @property
    def init_kind(self) -> str:
        """Return ``random``, ``imagenet`` or ``clustering`` (the arm an analysis groups by)."""
        return self.init if self.init in ("random", "imagenet") else "clustering"


@dataclass(frozen=True)
class ClusteringConfig:
    """Knobs of PICA / LSD.

    Attributes:
        k: number of clusters; 0 = the number of label combinations in the labelled split
            that occur at least ``min_combination_count`` times.
        lam: λ, weight of the cluster-size prior (paper default 2).
        alpha: α of the symmetric Dirichlet prior (LSD only; 1 + ε, paper asks for a sweep).
        min_combination_count: rarer label combinations are not counted as clusters.
    """

    k: int = 0
    lam: float = 2.0
    alpha: float = 1.05
    min_combination_count: int = 2

    def __post_init__(self):
        if self.k < 0 or self.k == 1:
            raise ConfigError(f"k={self.k}: expected 0 (from label combinations) or >= 2")
        if self.lam < 0:
            raise ConfigError(f"lam={self.lam}: expected >= 0")
        if self.alpha <= 0:
            raise ConfigError(f"alpha={self.alpha}: expected > 0 (1 + ε in the paper)")
        if self.min_combination_count < 1:
            raise ConfigError(f"min_combination_count={self.min_combination_count}: expected >= 1")


@dataclass(frozen=True)
class FixMatchConfig:
    """Knobs of FixMatch.

    Attributes:
        tau: τ, confidence threshold above which a pseudo-label is used (0.95 in FixMatch).
        lambda_u: λ_u, weight of the unlabelled loss.
        unlabelled_exams: exams per unlabelled batch (16 in the paper).
    """

    tau: float = 0.95
    lambda_u: float = 1.0
    unlabelled_exams: int = 16

    def __post_init__(self):
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau={self.tau}: expected 0 < τ <= 1")
        if self.lambda_u < 0:
            raise ConfigError(f"lambda_u={self.lambda_u}: expected >= 0")
        if self.unlabelled_exams < 1:
            raise ConfigError(f"unlabelled_exams={self.unlabelled_exams}: expected >= 1")


# Each strategy's flat config = the fields of these classes (names are unique across them).
STRATEGY_CONFIGS: dict[str, tuple[type, ...]] = {
    "pica": (TrainConfig, ClusteringConfig),
    "lsd": (TrainConfig, ClusteringConfig),
    "supervised": (TrainConfig,),
    "fixmatch_one": (TrainConfig, FixMatchConfig),
    "fixmatch_two": (TrainConfig, FixMatchConfig),
}


def config_classes(strategy: str) -> tuple[type, ...]:
    """Return the config dataclasses whose fields form ``strategy``'s flat config."""
    if strategy not in STRATEGY_CONFIGS:
        raise ConfigError(f"strategy={strategy!r}: expected one of {list(STRATEGY_CONFIGS)}")
    return STRATEGY_CONFIGS[strategy]


def parse_config(config: dict) -> tuple:
    """Return (TrainConfig, *strategy configs) from a flat dict; unknown keys raise ConfigError."""
    return split_flat(dict(config), *config_classes(config.get("strategy", TrainConfig.strategy)))


def resolved_config(config: dict) -> dict:
    """Return the full flat config with defaults filled in, plus ``init_kind``."""
    configs = parse_config(config)
    flat = {key: value for cfg in configs for key, value in asdict(cfg).items()}
    return {**flat, "init_kind": configs[0].init_kind}
