"""Evaluation shared by every strategy (paper Sec. 3.2).

Scores in [0, 1] per class → per-class thresholds that maximise F1 on **validation** → the
same thresholds applied to test → per-class precision / recall / F1 and their support-weighted
average. Thresholds are never fitted on test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uslearn import augment, files, metrics
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.loader import load_batch

EVAL_BATCH = 256


@torch.no_grad()
def forward(
    model: torch.nn.Module,
    images: torch.Tensor,
    size: int,
    device: torch.device,
    amp_dtype=None,
    features: bool = False,
) -> dict[str, torch.Tensor]:
    """Return every head's (B, n) float32 logits (on the CPU) for a batch of stored images.

    The one forward pass of evaluation and of ``uslearn predict`` (no augmentation, the
    run's precision), so both give the same scores.

    Args:
        model: a ``uslearn.models.Network`` in eval mode (not wrapped in DDP or compile).
        images: (B, S, S) uint8 stored images, on ``device`` or the CPU.
        size: the side the network sees (``augment.to_input`` resizes the stored images).
        features: also return the (B, 512) backbone features under ``"features"``.
    """
    x = augment.to_input(images.to(device, non_blocking=True), size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        feats = model.features(x)  # (B, 512)
        batch = {**model.head(feats), **({"features": feats} if features else {})}
    return {name: value.float().cpu() for name, value in batch.items()}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Return the per-class scores of a sigmoid head's logits (one expression everywhere)."""
    return 1.0 / (1.0 + np.exp(-logits))


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: Dataset,
    rows: np.ndarray,
    size: int,
    device: torch.device,
    amp_dtype=None,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """Return every head's (N, n) float32 logits for dataset ``rows`` (eval mode, no augmentation).

    Args:
        model: a ``uslearn.models.Network`` (not wrapped in DDP or ``torch.compile``).
        size: the side the network sees (``augment.to_input`` resizes the stored images).
        features: also return the (N, 512) backbone features under ``"features"``.
    """
    was_training = model.training
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(rows), EVAL_BATCH):
        block = load_batch(data.images, rows[start : start + EVAL_BATCH], device=device)
        for name, value in forward(model, block, size, device, amp_dtype, features).items():
            outputs.setdefault(name, []).append(value)
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in outputs.items()}


def predict_logits(
    model: torch.nn.Module,
    data: Dataset,
    rows: np.ndarray,
    head: str,
    size: int,
    device: torch.device,
    amp_dtype=None,
) -> np.ndarray:
    """Return the (N, K) float32 logits of ``head`` for dataset ``rows`` ((0, 0) for no rows)."""
    return predict(model, data, rows, size, device, amp_dtype).get(
        head, np.zeros((0, 0), np.float32)
    )


def weighted_f1(val_scores: np.ndarray, y_val: np.ndarray) -> float:
    """Return the support-weighted F1 on validation with thresholds fitted on validation.

    This is the model-selection score (paper Sec. 3.2: thresholds set during validation).
    """
    thresholds = metrics.fit_thresholds(val_scores, y_val)
    return float(
        metrics.multilabel_report(val_scores, y_val, thresholds, CLASSES).loc["weighted", "f1"]
    )


def test_report(
    val_scores: np.ndarray, y_val: np.ndarray, test_scores: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, pd.DataFrame]:
    """Return (thresholds fitted on validation, test report with classes + weighted rows)."""
    thresholds = metrics.fit_thresholds(val_scores, y_val)
    return thresholds, metrics.multilabel_report(test_scores, y_test, thresholds, CLASSES)


def report_metrics(report: pd.DataFrame, prefix: str = "test") -> dict[str, float]:
    """Return the MLflow-contract metric names for a report frame (docs/CONTRACTS.md)."""
    out = {
        f"{prefix}/{m}_weighted": float(report.loc["weighted", m])
        for m in ("f1", "precision", "recall")
    }
    for cls in CLASSES:
        for m in ("f1", "precision", "recall", "support"):
            out[f"{prefix}/{m}/{cls}"] = float(report.loc[cls, m])
    return out


def write_artifacts(
    out_dir: Path,
    thresholds: np.ndarray,
    report: pd.DataFrame,
    final: dict[str, float],
    config: dict,
) -> None:
    """Write thresholds.json, per_class.csv, metrics.json and config.json into ``out_dir``.

    Each file is replaced whole or not at all (``uslearn.files``): a disk that fills up leaves
    an earlier run's file as it was and raises ``EnvError`` naming the file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds_text = json.dumps(dict(zip(CLASSES, map(float, thresholds))), indent=2)
    files.write_text(out_dir / "thresholds.json", thresholds_text, "the thresholds")
    files.write_text(out_dir / "per_class.csv", report.to_csv(index_label="class"), "the report")
    metrics_text = json.dumps(final, indent=2, sort_keys=True)
    files.write_text(out_dir / "metrics.json", metrics_text, "the metrics")
    config_text = json.dumps(config, indent=2, sort_keys=True)
    files.write_text(out_dir / "config.json", config_text, "the run's config")


def format_report(report: pd.DataFrame) -> str:
    """Return the per-class table as aligned text for the terminal."""
    table = report.copy()
    for column in ("precision", "recall", "f1"):
        table[column] = (100 * table[column]).map(lambda v: f"{v:6.2f}")
    table["support"] = table["support"].astype(int)
    return table.to_string()
