"""The predictions file: written atomically as CSV or Parquet, with the rejected list beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.data.dataset import Dataset
from uslearn.inference.package import ModelPackage, prediction_frame
from uslearn.inference.score import Scored


def rejected_path(out: Path) -> Path:
    """Return ``<out>.rejected.csv``: the images that were not scored, and why."""
    return out.with_name(f"{out.name}.rejected.csv")


def fig7_path(out: Path) -> Path:
    """Return ``<out stem>.fig7.png`` beside the predictions file."""
    return out.with_name(f"{out.stem}.fig7.png")


class RowView:
    """``view[i]`` is ``images[rows[i]]``: a lazy selection of a memory-mapped store."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[self.rows[i]])


def write_predictions(package: ModelPackage, scored: Scored, out: Path) -> pd.DataFrame:
    """Write the predictions table to ``out`` (.csv or .parquet) atomically; return it."""
    frame = prediction_frame(package, scored.image, scored.scores, scored.cluster)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    if out.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return frame


@dataclass
class Labelled:
    """The scored dataset rows that carry labels, for a check against the truth and Fig. 7.

    Attributes:
        index: positions in ``Scored`` of the labelled images.
        rows: their dataset rows.
        y_true, y_pred: (N, C) int8 true labels and the model's 0/1 labels.
        scores: (N, C) their scores.
    """

    index: np.ndarray
    rows: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def labelled(package: ModelPackage, scored: Scored, data: Dataset) -> Labelled:
    """Return the labelled images among the scored dataset rows (possibly none)."""
    rows = np.asarray(scored.rows, dtype=np.int64)
    y = data.labels[rows]
    index = np.flatnonzero((y >= 0).all(axis=1))
    scores = np.asarray(scored.scores)[index]
    return Labelled(index, rows[index], y[index], package.labels(scores), scores)
