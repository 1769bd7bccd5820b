"""What ``uslearn predict`` scores: dataset rows, a folder of image files, or a DICOM export.

Each source is an ordered list of work items (``uslearn.data.ingest.Item``: a file, or a
dataset row, and the image ids it yields) plus a decode rule. Files are decoded with the
import commands' own functions (``importers.decode_file``, ``dicom.decode_file``): the same
crop, colour-Doppler rejection and letterbox resize as the training data got, so a frame
scored here and the same frame imported and scored from the dataset give the same image.
Unreadable and rejected files are skipped and reported, never fatal.

Image ids are those an import gives (docs/DATA.md, "Privacy"): a dataset's ``image_id``; for
a folder the pseudonym of the file's path relative to it, for DICOM the pseudonym of its
SOPInstanceUID (+ ``-f<frame>`` of a multi-frame file), made with the import's salt. So no
source path or raw identifier reaches the predictions or the rejected list, the same file
gets the same id as in a dataset imported with that salt, and ``uslearn data locate`` finds
the file of an id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uslearn.data import dicom, importers
from uslearn.data.dataset import SPLITS, Dataset
from uslearn.data.images import Preprocess
from uslearn.data.importers import ImportSettings
from uslearn.data.ingest import Item, Outcome, Workers
from uslearn.data.rejected import Rejection
from uslearn.errors import UserError

KINDS = ("data", "images", "dicom")


@dataclass
class Source:
    """The images to score, as ordered work items.

    Attributes:
        kind: ``data`` (dataset rows), ``images`` (a folder of files) or ``dicom``.
        root: the dataset directory or the input folder.
        items: the work, in output order; ``item.records[j]["image_id"]`` names its j-th image.
        preprocess: the import rules for files (the model's); unused for dataset rows.
        rejections: items found unusable while listing (DICOM headers), with the reason.
        data: the opened dataset (kind ``data``).
    """

    kind: str
    root: Path
    items: list[Item]
    preprocess: Preprocess
    rejections: list[Rejection] = field(default_factory=list)
    data: Dataset | None = None

    @property
    def n_images(self) -> int:
        """Return how many images the items yield at most (before rejections)."""
        return sum(len(item.records) for item in self.items)

    def rows(self) -> np.ndarray:
        """Return the dataset rows of a ``data`` source, in output order."""
        return np.array([item.task for item in self.items], dtype=np.int64)


def from_dataset(data: Dataset, split: str | None, preprocess: Preprocess) -> Source:
    """Return the rows of ``split`` (every row when None) of an opened dataset.

    Raises:
        UserError: an unknown or empty split.
    """
    if split is not None and split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    rows = data.indices(split) if split is not None else np.arange(len(data))
    if len(rows) == 0:
        where = f"split '{split}'" if split is not None else "the dataset"
        raise UserError(f"{data.root}: {where} has no images; nothing to predict")
    ids = data.manifest["image_id"].to_numpy()
    items = [Item(str(ids[r]), int(r), [{"image_id": str(ids[r])}]) for r in rows]
    return Source("data", data.root, items, preprocess, data=data)


def from_images(root: str | Path, preprocess: Preprocess, salt: str) -> Source:
    """Return every image file under ``root`` (sorted; hidden files skipped), as the folder
    import lists them (``importers.plan_folder`` with every file unlabelled).

    Raises:
        UserError: no such folder, or no image file in it.
    """
    items, _ = importers.plan_folder(Path(root), None, include_unlisted=True, salt=salt)
    return Source("images", Path(root), items, preprocess)


def from_dicom(
    root: str | Path, preprocess: Preprocess, salt: str, max_frames: int, workers: int
) -> Source:
    """Return every image frame of a DICOM export (headers scanned, unusable files listed).

    Raises:
        UserError: no such folder, no files, or no file with usable image frames.
    """
    settings = ImportSettings(preprocess=preprocess, skip_bad=True, workers=workers)
    with Workers(workers) as pool:
        items, rejections, _ = dicom.plan_dicom(Path(root), None, salt, settings, max_frames, pool)
    if not items:
        raise UserError(
            f"--dicom {root}: no file with image frames ({len(rejections)} skipped: "
            f"{sorted({r.reason for r in rejections})})"
        )
    return Source("dicom", Path(root), items, preprocess, rejections=list(rejections))


class Decoder:
    """Turns a list of tasks of one source into outcomes ``(stored image | None, reason, detail)``.

    The one decoding rule of both the single-process and the Ray Data path (a Ray actor holds
    one). Tasks are those of ``Source.items``; a DICOM task may come JSON-encoded, as Ray Data
    stores it. A dataset's memory map is opened on first use and never pickled.
    """

    def __init__(self, kind: str, root: str | Path, preprocess: Preprocess):
        if kind not in KINDS:
            raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
        self.kind, self.root, self.preprocess = kind, str(root), preprocess
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def images(self) -> np.ndarray:
        """Return the dataset's (N, S, S) memory map (kind ``data``)."""
        if self._images is None:
            self._images = Dataset.open(self.root).images
        return self._images

    def __call__(self, tasks: list) -> list[list[Outcome]]:
        """Return, per task, the outcomes of its images (one per frame for DICOM)."""
        if self.kind == "data":
            block = self.images()[np.asarray(tasks, dtype=np.int64)]
            return [[(image, "", "")] for image in block]
        if self.kind == "images":
            return [importers.decode_file(str(task), self.preprocess) for task in tasks]
        decoded = []
        for task in tasks:
            path, frames = json.loads(task) if isinstance(task, str) else task
            decoded.append(dicom.decode_file((path, tuple(frames)), self.preprocess))
        return decoded


def encode_task(kind: str, task) -> int | str:
    """Return ``task`` as an int or a string (what a Ray Data column stores)."""
    if kind == "data":
        return int(task)
    if kind == "dicom":
        path, frames = task
        return json.dumps([path, list(frames)])
    return str(task)
