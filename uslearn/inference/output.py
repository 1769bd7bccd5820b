"""The predictions table and file (CSV or Parquet, replaced whole), the rejected list beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn import files
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.rejected import check_rejected_path
from uslearn.data.target import FIGURE, Output, check_output
from uslearn.inference.package import ModelPackage
from uslearn.inference.score import Scored


def prediction_frame(
    package: ModelPackage, image: list[str], scores: np.ndarray, cluster: np.ndarray | None = None
) -> pd.DataFrame:
    """Return the predictions table: image, score_<class>, label_<class>, labels (';'-joined).

    A clustering model's table also has ``cluster`` (the argmax cluster of each image).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(image), len(package.classes))
    labels = package.labels(scores)
    frame = pd.DataFrame({"image": pd.Series(image, dtype=str)})
    for c, name in enumerate(package.classes):
        frame[f"score_{name}"] = scores[:, c]
    for c, name in enumerate(package.classes):
        frame[f"label_{name}"] = labels[:, c]
    names = np.array(package.classes, dtype=object)
    frame["labels"] = [";".join(names[row.astype(bool)]) for row in labels]
    if cluster is not None:
        frame["cluster"] = np.asarray(cluster, dtype=np.int64)
    return frame


def score_columns(classes: tuple[str, ...] = CLASSES) -> list[str]:
    """Return the ``score_<class>`` column names in class order."""
    return [f"score_{c}" for c in classes]


def label_columns(classes: tuple[str, ...] = CLASSES) -> list[str]:
    """Return the ``label_<class>`` column names in class order."""
    return [f"label_{c}" for c in classes]


def rejected_path(out: Path) -> Path:
    """Return ``<out>.rejected.csv``: the images that were not scored, and why."""
    return out.with_name(f"{out.name}.rejected.csv")


def fig7_path(out: Path) -> Path:
    """Return ``<out stem>.fig7.png`` beside the predictions file."""
    return out.with_name(f"{out.stem}.fig7.png")


def _predictions_file(path: Path) -> str:
    """Return "" when ``path`` holds a predictions table (``prediction_frame``), else why not."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
        else:
            with open(path, encoding="utf-8") as handle:
                names = handle.readline().strip().split(",")
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError, so is a bad UTF-8
        names = []
    ours = names[:1] == ["image"] and "labels" in names and any(n[:6] == "score_" for n in names)
    return "" if ours else "is not a predictions file (columns image, score_<class>, ..., labels)"


PREDICTIONS = Output("a predictions file", False, _predictions_file)


def check_out(out: Path, overwrite: bool, inputs: list, figure: bool) -> None:
    """Refuse an ``--out`` (or the rejected list and Fig. 7 beside it) that would land in an
    input or replace a file of another kind (``check_output``); return None when safe.

    Raises:
        DatasetError: naming the path; nothing was written.
    """
    check_output(out, overwrite, PREDICTIONS, inputs)
    check_rejected_path(rejected_path(out), inputs, "--out's rejected list")
    if figure:
        check_output(fig7_path(out), True, FIGURE, inputs, "--out's Fig. 7")


class RowView:
    """``view[i]`` is ``images[rows[i]]``: a lazy selection of a memory-mapped store."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[self.rows[i]])


def write_predictions(package: ModelPackage, scored: Scored, out: Path) -> pd.DataFrame:
    """Write the predictions table to ``out`` (.csv or .parquet), replaced whole; return it.

    Raises:
        EnvError: disk full or permission denied (an earlier ``out`` is left as it was).
    """
    frame = prediction_frame(package, scored.image, scored.scores, scored.cluster)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        content = frame.to_parquet(None, index=False)
    else:
        content = frame.to_csv(index=False).encode("utf-8")
    with files.replacing(out, "the predictions") as handle:
        handle.write(content)
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
