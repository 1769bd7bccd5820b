"""``uslearn data import``: a folder of PNG / JPEG / BMP / TIFF frames plus a labels CSV.

Only images listed in the CSV are imported, unless ``include_unlisted`` adds the others as
unlabelled (their patient and exam are those of the CSV rows in the same folder when these
agree, otherwise the folder itself stands for both). Patient, exam and image identifiers are
pseudonymised with the salt before anything is stored; see ``uslearn/data/pseudonym.py``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uslearn.data.dataset import CLASSES, MAX_SIZE, MIN_SIZE, DatasetError
from uslearn.data.images import IMAGE_SUFFIXES, ImageRejected, Preprocess, prepare, read_image_file
from uslearn.data.ingest import Item, Outcome, StoreAppender, Workers, decode_all, finish_import
from uslearn.data.labels_csv import check_inside, read_labels_csv
from uslearn.data.pseudonym import pseudonym
from uslearn.data.rejected import check_rejected_path, default_rejected_path
from uslearn.data.target import check_target
from uslearn.data.writer import DatasetWriter


@dataclass(frozen=True)
class ImportSettings:
    """Settings shared by both importers.

    Attributes:
        preprocess: size, crop and colour-Doppler rule (``uslearn.data.images.Preprocess``).
        workers: decoding processes (1 decodes in this process).
        skip_bad: skip unreadable/invalid items and list them instead of stopping at the first.
        overwrite: replace an existing dataset at the output path (only once complete, and
            only a uslearn dataset: ``uslearn.data.target.check_target``).
        splits: keyword arguments of ``uslearn.data.splits.assign_splits`` (val, test,
            labelled, seed) for the rows whose split the CSV does not give.
        rejected: where to write the rejected list; None = ``<out>.rejected.csv``.
    """

    preprocess: Preprocess = field(default_factory=Preprocess)
    workers: int = 1
    skip_bad: bool = False
    overwrite: bool = False
    splits: dict = field(default_factory=dict)
    rejected: Path | None = None


def check_size(size: int) -> None:
    """Raise DatasetError when ``size`` is outside the supported range."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DatasetError(f"--size {size} is out of range; expected {MIN_SIZE}..{MAX_SIZE} pixels")


def decode_file(path: str, options: Preprocess) -> list[Outcome]:
    """Return the one outcome of an image file: (stored image, "", "") or (None, reason, detail)."""
    try:
        return [(prepare(read_image_file(path), options), "", "")]
    except ImageRejected as err:
        return [(None, err.reason, err.detail)]


def list_images(root: Path) -> list[str]:
    """Return the image files under ``root`` as sorted relative POSIX paths (hidden ones skipped)."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not hidden:
            check_inside(root, rel.as_posix(), f"--images {root}")
            found.append(rel.as_posix())
    return sorted(found)


def _record(rel: str, patient_raw: str, exam_raw: str, split: str, labels, salt: str) -> dict:
    # No source path: folder names of hospital exports often hold patient names.
    return {
        "image_id": pseudonym("image", rel, salt),
        "patient_id": pseudonym("patient", patient_raw, salt),
        # Exam ids are often numbered per patient ("1", "2"): scope them by the patient.
        "exam_id": pseudonym("exam", f"{patient_raw}\x00{exam_raw}", salt),
        "split": split or None,
        **dict(zip(CLASSES, (int(v) for v in labels))),
    }


def plan_folder(
    root: Path, labels_csv: Path | None, include_unlisted: bool, salt: str
) -> tuple[list[Item], dict]:
    """Return the items to decode and the planning counts for the report.

    Raises:
        DatasetError: for an empty or missing input folder and any labels CSV problem.
    """
    if not root.is_dir():
        raise DatasetError(f"--images {root}: not a folder")
    files = list_images(root)
    if not files:
        raise DatasetError(
            f"--images {root}: no image files found (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    if labels_csv is None and not include_unlisted:
        raise DatasetError(
            "--labels is required (or pass --include-unlisted to import all as unlabelled)"
        )
    table = read_labels_csv(labels_csv) if labels_csv is not None else None
    items: list[Item] = []
    listed: set[str] = set()
    folder_ids: dict[str, set[tuple[str, str]]] = {}
    if table is not None:
        for row in table.itertuples(index=False):
            check_inside(root, row.key, f"{labels_csv}, line {row.line}")
            listed.add(row.key)
            folder_ids.setdefault(str(Path(row.key).parent), set()).add(
                (row.patient_raw, row.exam_raw)
            )
            record = _record(row.key, row.patient_raw, row.exam_raw, row.split, row.labels, salt)
            items.append(Item(row.key, str(root / row.key), [record], csv_line=row.line))
    unlisted = [f for f in files if f not in listed]
    if include_unlisted:
        unlabelled = np.full(len(CLASSES), -1, np.int8)
        for rel in unlisted:
            folder = str(Path(rel).parent)
            ids = folder_ids.get(folder, set())
            patient_raw, exam_raw = next(iter(ids)) if len(ids) == 1 else (f"folder:{folder}",) * 2
            record = _record(rel, patient_raw, exam_raw, "", unlabelled, salt)
            items.append(Item(rel, str(root / rel), [record]))
    counts = {
        "files_found": len(files),
        "csv_rows": 0 if table is None else len(table),
        "unlisted": len(unlisted),
        "unlisted_included": len(unlisted) if include_unlisted else 0,
    }
    return items, counts


def import_folder(
    images: str | Path,
    labels: str | Path | None,
    out: str | Path,
    salt: str,
    settings: ImportSettings | None = None,
    include_unlisted: bool = False,
) -> Path:
    """Import a folder of frames and its labels CSV into a new dataset directory.

    Args:
        images: the input folder; CSV paths are relative to it.
        labels: the labels CSV (see ``uslearn.data.labels_csv``); None only with
            ``include_unlisted`` (everything unlabelled).
        out: the dataset directory to create.
        salt: pseudonymisation salt (``uslearn.data.pseudonym.resolve_salt``).
        settings: the shared import settings; None = defaults.
        include_unlisted: also import files the CSV does not list, as unlabelled.

    Returns:
        The dataset directory (committed; ``import_report.json`` inside).

    Raises:
        DatasetError: for bad input, or at the first bad image unless ``settings.skip_bad``.
    """
    started = time.perf_counter()
    settings = settings or ImportSettings()
    out, root = Path(out), Path(images)
    check_size(settings.preprocess.size)
    inputs = [root, *([labels] if labels else [])]
    check_target(out, settings.overwrite, inputs)
    rejected = settings.rejected or default_rejected_path(out)
    check_rejected_path(rejected, inputs)
    items, counts = plan_folder(root, Path(labels) if labels else None, include_unlisted, salt)
    decode = functools.partial(decode_file, options=settings.preprocess)
    with (
        DatasetWriter(
            out, settings.preprocess.size, len(items), "folder-import", settings.overwrite, inputs
        ) as writer,
        StoreAppender(writer) as appender,
        Workers(settings.workers) as workers,
    ):
        records, rejections = decode_all(
            items, decode, appender, workers, settings.skip_bad, "import"
        )
        report = {"importer": "folder", **counts, "settings": settings_report(settings)}
        return finish_import(
            writer, appender, records, rejections, report, settings.splits, rejected, started
        )


def settings_report(settings: ImportSettings) -> dict:
    """Return the settings recorded in import_report.json."""
    p = settings.preprocess
    return {
        "size": p.size,
        "crop": p.crop,
        "doppler_fraction": p.doppler_fraction,
        "doppler_chroma": p.doppler_chroma,
        "workers": settings.workers,
        "skip_bad": settings.skip_bad,
    }
