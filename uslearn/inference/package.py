"""The model package: everything a trained run needs to be applied to new images.

A package is a small directory, the same files a run writes into its output folder:

    best.pt             the kept weights ({"model": Network state dict, "config": TrainConfig})
    thresholds.json     per-class thresholds, fitted on validation at training time
    cluster_labels.csv  clustering models: Algorithm 1's (K, C) cluster → soft multi-label matrix
    config.json         the run's resolved config (strategy, image_size, dataset_fingerprint, ...)
    metrics.json        the run's final metrics (validation and test weighted F1, ...)
    package.json        what using the model needs beyond the weights: class names in contract
                        order, the scoring head, network input size, stored image size and the
                        import preprocessing (crop, colour-Doppler rule), strategy, family,
                        dataset fingerprint

So ``uslearn train --out DIR`` leaves a package in DIR, and the MLflow model of a run carries
the same directory as its artifact ``package`` (``uslearn.study.run_model``).
``ModelPackage.load`` reads either, or a downloaded MLflow model directory.

Scores: a sigmoid head gives per-class probabilities; a clustering model gives every image the
soft multi-label v̂_k of its argmax cluster (Algorithm 1), exactly as at evaluation time. Labels
are ``score >= threshold`` with the validation-fitted thresholds (paper Sec. 3.2).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uslearn import files
from uslearn.data.dataset import Dataset
from uslearn.data.images import Preprocess, prepare
from uslearn.data.ingest import REPORT
from uslearn.errors import UserError
from uslearn.models import Network, load_network
from uslearn.strategies import evaluation
from uslearn.strategies.context import autocast_dtype, resolve_device
from uslearn.strategies.registry import entry

PACKAGE_JSON = "package.json"
WEIGHTS = "best.pt"
FORMAT = 1
# Where the package lies inside an MLflow model directory (the pyfunc artifact "package").
MLFLOW_ARTIFACT = "package"
IN_MLFLOW_MODEL = Path("artifacts") / MLFLOW_ARTIFACT
# Files of a run directory that make up a package (cluster_labels.csv for clustering only).
FILES = (
    WEIGHTS,
    "thresholds.json",
    "config.json",
    "metrics.json",
    "cluster_labels.csv",
    PACKAGE_JSON,
)
SCORING_HEADS = ("multilabel", "cluster")  # sigmoid probabilities, or Algorithm 1's soft labels


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; a model package holds {', '.join(FILES)}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def import_settings(data: Dataset) -> Preprocess:
    """Return the preprocessing that made ``data``'s images (its import report, else defaults)."""
    report = data.root / REPORT
    settings = json.loads(report.read_text()).get("settings", {}) if report.is_file() else {}
    defaults = Preprocess()
    return Preprocess(
        size=data.size,
        crop=settings.get("crop", defaults.crop),
        doppler_fraction=float(settings.get("doppler_fraction", defaults.doppler_fraction)),
        doppler_chroma=int(settings.get("doppler_chroma", defaults.doppler_chroma)),
    )


def write_package(run_dir: str | Path, data: Dataset) -> Path:
    """Write ``package.json`` into a finished run directory, making it a model package.

    Args:
        run_dir: the ``out_dir`` of ``uslearn.strategies.run`` (best.pt, thresholds.json, ...).
        data: the dataset the run trained on (its classes, stored size and import settings).

    Returns:
        The path of ``package.json``.

    Raises:
        UserError: a file of the run is missing or unreadable.
    """
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    network, _ = load_network(run_dir / WEIGHTS)
    heads = network.head_sizes
    head = "multilabel" if "multilabel" in heads else "cluster"
    if head == "cluster" and not (run_dir / "cluster_labels.csv").is_file():
        raise UserError(f"{run_dir}: a clustering model needs cluster_labels.csv (Algorithm 1)")
    preprocess = import_settings(data)
    info = {
        "format": FORMAT,
        "classes": list(data.meta["classes"]),
        "head": head,
        "heads": heads,
        "image_size": int(config["image_size"]),
        "stored_size": data.size,
        "preprocess": {
            "crop": preprocess.crop,
            "doppler_fraction": preprocess.doppler_fraction,
            "doppler_chroma": preprocess.doppler_chroma,
        },
        "strategy": config["strategy"],
        "family": entry(config["strategy"]).family,
        "dataset_fingerprint": data.fingerprint,
    }
    path = run_dir / PACKAGE_JSON
    files.write_text(path, json.dumps(info, indent=2) + "\n", "the model package's description")
    return path


@dataclass
class BatchScores:
    """Scores of one batch of images.

    Attributes:
        scores: (B, C) per-class scores in [0, 1]: float32 sigmoid probabilities, or the
            float64 rows of Algorithm 1's matrix for a clustering model.
        cluster: (B,) argmax cluster of a clustering model, else None.
        cluster_probs: (B, K) softmax cluster probabilities of a clustering model, else None.
        features: (B, 512) backbone features when asked for, else None.
    """

    scores: np.ndarray
    cluster: np.ndarray | None = None
    cluster_probs: np.ndarray | None = None
    features: np.ndarray | None = None


@dataclass
class ModelPackage:
    """A loaded model package (see the module docstring for its files).

    Attributes:
        network: the ResNet18 ``Network``, in eval mode.
        classes: class names in the contract order; score column c belongs to ``classes[c]``.
        thresholds: (C,) validation-fitted thresholds (``inf``: class never predicted).
        head: ``"multilabel"`` (sigmoid scores) or ``"cluster"`` (Algorithm 1 soft labels).
        image_size: side length the network sees (stored images are resized to it).
        preprocess: the import rules that turn a raw frame into a stored image
            (``size`` = the stored image side the model was trained on).
        strategy, family: the strategy that produced it and its family.
        dataset_fingerprint: the fingerprint of the training dataset.
        cluster_labels: (K, C) Algorithm 1 matrix of a clustering model, else None.
        metrics: the run's final metrics (``val/f1_weighted``, ``test/f1_weighted``, ...).
        root: the directory it was loaded from.
    """

    network: Network
    classes: tuple[str, ...]
    thresholds: np.ndarray
    head: str
    image_size: int
    preprocess: Preprocess
    strategy: str
    family: str
    dataset_fingerprint: str
    cluster_labels: np.ndarray | None
    metrics: dict[str, float]
    root: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None

    @property
    def stored_size(self) -> int:
        """Return the side of the stored images the model was trained on."""
        return self.preprocess.size

    @property
    def is_clustering(self) -> bool:
        """Return True when scores come from Algorithm 1's cluster → multi-label matrix."""
        return self.head == "cluster"

    @classmethod
    def load(cls, path: str | Path) -> ModelPackage:
        """Return the package in ``path``: a run directory, a package, or an MLflow model.

        Raises:
            UserError: nothing there, a missing or inconsistent file (the message names it).
        """
        root = Path(path)
        if (root / "MLmodel").is_file():  # a downloaded MLflow model: the package is its artifact
            root = root / IN_MLFLOW_MODEL
        if not root.is_dir():
            raise UserError(
                f"model {path}: no such directory (expected a run directory of 'uslearn train "
                "--out', a model package, or runs:/RUN_ID, models:/NAME/VERSION)"
            )
        if not (root / PACKAGE_JSON).is_file():
            raise UserError(
                f"{root}: no {PACKAGE_JSON}; a model package is a finished 'uslearn train --out' "
                "directory or an MLflow model logged by uslearn"
            )
        info = _read_json(root / PACKAGE_JSON)
        if info.get("format") != FORMAT:
            raise UserError(
                f"{root / PACKAGE_JSON}: format {info.get('format')}, expected {FORMAT}"
            )
        classes = tuple(info["classes"])
        if not (root / WEIGHTS).is_file():
            raise UserError(
                f"model {path}: {root / WEIGHTS} (the model's weights) is missing; copy the "
                "whole package again, or train it again"
            )
        network, _ = load_network(root / WEIGHTS)
        if network.head_sizes != info["heads"]:
            raise UserError(
                f"{root}: {WEIGHTS} has heads {network.head_sizes}, {PACKAGE_JSON} says {info['heads']}"
            )
        by_class = _read_json(root / "thresholds.json")
        if set(by_class) != set(classes):
            raise UserError(
                f"{root / 'thresholds.json'}: classes {sorted(by_class)} differ from {list(classes)}"
            )
        thresholds = np.array([float(by_class[c]) for c in classes], dtype=np.float64)
        cluster_labels = None
        if info["head"] == "cluster":
            table = pd.read_csv(
                root / "cluster_labels.csv", index_col="cluster", float_precision="round_trip"
            )
            missing = [c for c in classes if c not in table.columns]
            if missing or len(table) != network.head_sizes["cluster"]:
                raise UserError(
                    f"{root / 'cluster_labels.csv'}: expected {network.head_sizes['cluster']} "
                    f"clusters × columns {list(classes)}; got {len(table)} rows, missing {missing}"
                )
            cluster_labels = table[list(classes)].to_numpy(dtype=np.float64)
        metrics_file = root / "metrics.json"
        metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
        pre = info["preprocess"]
        return cls(
            network=network,
            classes=classes,
            thresholds=thresholds,
            head=info["head"],
            image_size=int(info["image_size"]),
            preprocess=Preprocess(
                size=int(info["stored_size"]),
                crop=pre["crop"],
                doppler_fraction=float(pre["doppler_fraction"]),
                doppler_chroma=int(pre["doppler_chroma"]),
            ),
            strategy=info["strategy"],
            family=info["family"],
            dataset_fingerprint=info["dataset_fingerprint"],
            cluster_labels=cluster_labels,
            metrics={k: float(v) for k, v in metrics.items()},
            root=root,
        )

    def save(self, out: str | Path) -> Path:
        """Copy the package's files into a new directory ``out``; return it."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=False)
        for name in FILES:
            if (self.root / name).is_file():
                shutil.copy2(self.root / name, out / name)
        return out

    def describe(self) -> dict[str, str]:
        """Return the package's facts as flat strings (MLflow model metadata and version tags)."""
        facts = {
            "strategy": self.strategy,
            "family": self.family,
            "head": self.head,
            "classes": ";".join(self.classes),
            "image_size": str(self.image_size),
            "stored_size": str(self.stored_size),
            "dataset_fingerprint": self.dataset_fingerprint,
        }
        for name in ("val/f1_weighted", "test/f1_weighted"):
            if name in self.metrics:
                facts[name.replace("/", "_")] = f"{self.metrics[name]:.6f}"
        return facts

    def check_data(self, data: Dataset) -> None:
        """Raise UserError unless ``data`` has this model's classes and stored image size."""
        classes = tuple(data.meta["classes"])
        if classes != self.classes:
            raise UserError(
                f"{data.root}: classes {list(classes)} differ from the model's {list(self.classes)}"
            )
        if data.size != self.stored_size:
            raise UserError(
                f"{data.root}: images are stored at {data.size} px, the model was trained on "
                f"{self.stored_size} px images; import the data again with --size {self.stored_size}"
            )

    def to(self, device: str = "auto", precision: str = "auto") -> ModelPackage:
        """Move the network to ``device`` (``auto``: a GPU when there is one); return self.

        The device and precision rules of training (``strategies.context``: bf16 autocast and
        channels_last on CUDA, fp32 on the CPU), so scores match its evaluation.
        """
        device = resolve_device(str(device))
        self.network.to(device)
        if device.type == "cuda":
            self.network.to(memory_format=torch.channels_last)
        self.device, self.amp_dtype = device, autocast_dtype(precision, device)
        return self

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Return a decoded (H, W[, 3]) uint8 frame as a stored image, by the import rules.

        Raises:
            ImageRejected: a colour-Doppler frame or an empty one.
        """
        return prepare(frame, self.preprocess)

    def check_prepared(self, images: np.ndarray) -> None:
        """Raise UserError unless ``images`` is a (B, S, S) uint8 batch at the stored size."""
        s = self.stored_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (s, s):
            raise UserError(
                f"prepared images must be uint8 (B, {s}, {s}) (the stored size of the model's "
                f"training data), got {images.dtype} {images.shape}"
            )

    def score(self, images: np.ndarray | torch.Tensor, features: bool = False) -> BatchScores:
        """Return the scores of a uint8 (B, S, S) batch of stored images.

        Args:
            images: stored images (``Dataset.images`` rows, or frames through ``prepare``).
            features: also return the (B, 512) backbone features.
        """
        out = evaluation.forward(
            self.network,
            torch.as_tensor(images),
            self.image_size,
            self.device,
            self.amp_dtype,
            features,
        )
        logits = out[self.head].numpy()
        feats = out["features"].numpy() if features else None
        if self.head == "multilabel":
            return BatchScores(scores=evaluation.sigmoid(logits), features=feats)
        cluster = logits.argmax(axis=1)
        return BatchScores(
            # float64 like the matrix: the thresholds are some of these very values.
            scores=self.cluster_labels[cluster],
            cluster=cluster,
            cluster_probs=torch.from_numpy(logits).softmax(dim=1).numpy(),
            features=feats,
        )

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """Return the (N, C) int8 0/1 labels: ``score >= threshold`` per class."""
        return (np.asarray(scores, dtype=np.float64) >= self.thresholds).astype(np.int8)


__all__ = ["BatchScores", "ModelPackage", "import_settings", "write_package"]
