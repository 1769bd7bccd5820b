"""``uslearn data import-dicom``: walk a PACS export with pydicom.

exam = StudyInstanceUID, patient = (IssuerOfPatientID +) PatientID, image = SOPInstanceUID
(+ frame number in multi-frame files), all pseudonymised before they leave the worker that
read them. Frames are converted from MONOCHROME1/2, RGB, YBR_FULL(_422) or PALETTE COLOR to
grayscale, cropped to the ultrasound region (the largest 2-D region of the Sequence of
Ultrasound Regions when present, else the largest non-background region) so burned-in text
and rulers are dropped, and colour-Doppler frames are rejected (``uslearn.data.images``).

Two passes, both parallel: headers first (ids, frame counts, transfer syntax: a missing
decoder stops the import before any pixel is decoded), then pixels.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from uslearn.data.dataset import CLASSES, DatasetError
from uslearn.data.images import (
    Box,
    ImageRejected,
    Preprocess,
    check_dimensions,
    prepare,
    to_uint8,
)
from uslearn.data.importers import ImportSettings, check_size, settings_report
from uslearn.data.ingest import Item, Outcome, StoreAppender, Workers, decode_all, finish_import
from uslearn.data.labels_csv import check_inside, read_labels_csv
from uslearn.data.pseudonym import pseudonym
from uslearn.data.rejected import (
    FILTER_REASONS,
    Rejection,
    check_rejected_path,
    default_rejected_path,
)
from uslearn.data.target import check_target
from uslearn.data.writer import DatasetWriter
from uslearn.log import progress

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# pip names of the packages pydicom's decoding plugins need (their import names differ).
PIP_NAMES = {"gdcm": "python-gdcm"}


def missing_decoder_hint(transfer_syntax: pydicom.uid.UID) -> str | None:
    """Return what to install to decode ``transfer_syntax``, or None when it can be decoded."""
    if not transfer_syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return f"pydicom has no decoder for {transfer_syntax.name} ({transfer_syntax})"
    if decoder.is_available:
        return None
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and x"
        needs = line.split("requires", 1)[-1].split(" and ")
        packages = [PIP_NAMES.get(n.strip().split(">")[0], n.strip()) for n in needs]
        packages = [p for p in packages if p and p != "numpy"]
        options.append("pip install " + " ".join(f"'{p}'" for p in packages))
    return (
        f"pixel data is compressed with {transfer_syntax.name} ({transfer_syntax}) and no "
        f"decoder for it is installed; install one: {'  or  '.join(options)}"
    )


# What every image object holds: a file read with force=True that has neither is not DICOM.
_IMAGE_IDENTIFIERS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")


def read_dicom(path: str, **kwargs) -> pydicom.Dataset:
    """Return the dataset of a DICOM file, legacy files included.

    A file written before Part 10 (no 128-byte preamble, no "DICM", no file meta) is read as
    pydicom can with ``force=True``, and its transfer syntax is set from the encoding pydicom
    found (implicit or explicit VR, little or big endian), so that its pixels decode.

    Raises:
        InvalidDicomError: the file is not DICOM, with or without a preamble.
    """
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as err:
        preamble_error = err
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        legacy = any(key in ds for key in _IMAGE_IDENTIFIERS)
    except Exception:  # noqa: BLE001 - force=True on a file of another kind fails anyhow
        legacy = False
    if not legacy:
        raise InvalidDicomError(
            f"{preamble_error}; read without a preamble, it holds no DICOM image identifiers"
        )
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit_vr, little_endian = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit_vr
            else (ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian)
        )
    return ds


def scan_file(path: str, salt: str) -> dict:
    """Return the pseudonymised header facts of one file, or {"reason", "detail"} if unusable."""
    try:
        ds = read_dicom(path, defer_size=1024)
    except InvalidDicomError as err:
        return {"reason": "not_dicom", "detail": str(err)}
    except Exception as err:  # noqa: BLE001 - any parse failure is an unreadable file
        return {"reason": "unreadable", "detail": f"{type(err).__name__}: {err}"}
    if not any(tag in ds for tag in PIXEL_TAGS):
        kind = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        return {"reason": "no_pixel_data", "detail": f"no pixel data ({kind})"}
    study = str(ds.get("StudyInstanceUID", "")).strip()
    if not study:
        return {"reason": "unreadable", "detail": "no StudyInstanceUID"}
    try:
        check_dimensions(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
    except ImageRejected as err:
        return {"reason": err.reason, "detail": err.detail}
    except (TypeError, ValueError):
        return {"reason": "unreadable", "detail": "Rows or Columns is not a number"}
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    hint = missing_decoder_hint(transfer_syntax) if transfer_syntax else None
    if hint:
        return {"reason": "no_decoder", "detail": hint}
    patient = str(ds.get("PatientID", "")).strip()
    issuer = str(ds.get("IssuerOfPatientID", "")).strip()
    sop = str(ds.get("SOPInstanceUID", "")).strip() or f"file:{path}"
    return {
        # No PatientID (already anonymised exports): each study stands for its own patient.
        "patient": pseudonym(
            "patient", f"{issuer}\x00{patient}" if patient else f"study\x00{study}", salt
        ),
        "patient_missing": not patient,
        "exam": pseudonym("exam", study, salt),
        "image": pseudonym("image", sop, salt),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "vendor": str(ds.get("Manufacturer", "")).strip(),
    }


def ultrasound_region(ds: pydicom.Dataset) -> Box | None:
    """Return the largest 2-D region of the Sequence of Ultrasound Regions (any region if no
    2-D one), as (top, bottom, left, right) with exclusive ends; None without the sequence."""
    best = None
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except AttributeError:
            continue
        two_d = int(item.get("RegionSpatialFormat", 0)) == 1  # 1 = 2D (tissue or flow)
        key = (two_d, (x1 - x0 + 1) * (y1 - y0 + 1))
        if best is None or key > best[0]:
            best = (key, (y0, y1 + 1, x0, x1 + 1))
    return None if best is None else best[1]


def frame_to_uint8(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Return one decoded frame as (H, W) or (H, W, 3) uint8 in display orientation.

    pydicom has already converted YBR_FULL / YBR_FULL_422 to RGB (``raw=False``).
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return to_uint8(rgb, bits=8 * rgb.dtype.itemsize)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that tissue is bright
        wide = frame.astype(np.int64)
        inverted = -1 - wide if frame.dtype.kind == "i" else (1 << bits) - 1 - wide
        frame = inverted.astype(frame.dtype)
    return to_uint8(frame, bits)


def decode_file(task: tuple[str, tuple[int, ...]], options: Preprocess) -> list[Outcome]:
    """Return one outcome per requested frame of a DICOM file."""
    path, frames = task
    try:
        ds = read_dicom(path)
        box = ultrasound_region(ds) if options.crop != "none" else None
        decoded = iter_pixels(ds, indices=list(frames))
        outcomes = []
        for frame in decoded:
            try:
                outcomes.append((prepare(frame_to_uint8(frame, ds), options, box), "", ""))
            except ImageRejected as err:
                outcomes.append((None, err.reason, err.detail))
        return outcomes
    except Exception as err:  # noqa: BLE001 - a decoder failure rejects the file, not the import
        return [(None, "unreadable", f"{type(err).__name__}: {err}")] * len(frames)


def list_files(root: Path) -> list[str]:
    """Return every candidate file under ``root`` (sorted, relative; hidden files and DICOMDIR skipped)."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.is_file() and path.name.upper() != "DICOMDIR" and not hidden:
            check_inside(root, rel.as_posix(), f"--dicom {root}")
            found.append(rel.as_posix())
    return sorted(found)


def pick_frames(n_frames: int, max_frames: int) -> tuple[int, ...]:
    """Return all frame numbers, or ``max_frames`` evenly spaced ones of a longer cine loop."""
    if max_frames <= 0 or n_frames <= max_frames:
        return tuple(range(n_frames))
    return tuple(sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, max_frames)}))


def _label_lookup(table, salt: str) -> dict[tuple[str, int], tuple]:
    """Map (file path or image pseudonym, frame or -1) to (labels, split, CSV line)."""
    lookup = {}
    for row in table.itertuples(index=False):
        key = row.key if row.key_column == "path" else pseudonym("image", row.key, salt)
        lookup[(key, row.frame)] = (row.labels, row.split, row.line)
    return lookup


def _unused_row(
    key: tuple[str, int],
    line: int,
    sampled: dict[str, tuple[int, tuple[int, ...]]],
    max_frames: int,
) -> str:
    """Return why labels CSV row ``line`` (``key``: path or UID, frame) labelled no frame."""
    n_frames, kept = sampled.get(key[0], (0, ()))
    if 0 <= key[1] < n_frames and key[1] not in kept:
        return (
            f"labels CSV line {line}: frame {key[1]} was not sampled by --max-frames "
            f"{max_frames} (kept frames {', '.join(map(str, kept))} of {n_frames}); raise "
            "--max-frames, or 0 keeps every frame"
        )
    frame = f"frame {key[1]} of " if key[1] >= 0 else ""
    return f"labels CSV line {line}: {frame}an image not found among the readable DICOM files"


def plan_dicom(
    root: Path,
    labels_csv: Path | None,
    salt: str,
    settings: ImportSettings,
    max_frames: int,
    workers: Workers,
) -> tuple[list[Item], list[Rejection], dict]:
    """Scan every file's header; return (items to decode, rejections so far, report counts).

    Raises:
        DatasetError: for an empty folder, labels CSV problems, and (unless ``skip_bad``)
            the first file that is unreadable, has no pixel data or lacks a decoder.
    """
    if not root.is_dir():
        raise DatasetError(f"--dicom {root}: not a folder")
    files = list_files(root)
    if not files:
        raise DatasetError(f"--dicom {root}: no files found")
    table = (
        read_labels_csv(labels_csv, keys=("path", "sop_instance_uid"), need_ids=False)
        if labels_csv is not None
        else None
    )
    lookup = _label_lookup(table, salt) if table is not None else {}
    used: set[tuple[str, int]] = set()
    scan = functools.partial(scan_file, salt=salt)
    tasks = [str(root / f) for f in files]
    results = workers.map(scan, tasks)
    items, rejections, seen = [], [], set()
    sampled: dict[str, tuple[int, tuple[int, ...]]] = {}  # path or UID -> (frames, kept)
    missing_patient = 0
    for rel, facts in progress(zip(files, results), total=len(files), desc="scan", unit="file"):
        if "reason" in facts:
            if facts["reason"] not in FILTER_REASONS and not settings.skip_bad:
                raise DatasetError(
                    f"{rel}: {facts['reason']}: {facts['detail']}. Pass --skip-bad to skip such "
                    "files and list them in the rejected file"
                )
            image_id = pseudonym("image", f"file:{rel}", salt)
            rejections.append(Rejection(rel, None, facts["reason"], facts["detail"], image_id))
            continue
        if facts["image"] in seen:
            rejections.append(
                Rejection(rel, None, "duplicate", "SOPInstanceUID seen before", facts["image"])
            )
            continue
        seen.add(facts["image"])
        missing_patient += facts["patient_missing"]
        frames = pick_frames(facts["frames"], max_frames)
        sampled[rel] = sampled[facts["image"]] = (facts["frames"], frames)
        records = []
        for frame in frames:
            found = None
            for key in ((rel, frame), (facts["image"], frame), (rel, -1), (facts["image"], -1)):
                if key in lookup:
                    found = lookup[key]
                    used.add(key)
                    break
            labels, split, _ = found or (np.full(len(CLASSES), -1, np.int8), "", 0)
            image_id = facts["image"] if facts["frames"] == 1 else f"{facts['image']}-f{frame}"
            record = {
                "image_id": image_id,
                "patient_id": facts["patient"],
                "exam_id": facts["exam"],
                "split": split or None,
                **dict(zip(CLASSES, (int(v) for v in labels))),
                "vendor": facts["vendor"],
            }
            records.append(record)
        items.append(Item(rel, (str(root / rel), frames), records, list(frames)))
    for key, (_, _, line) in lookup.items():
        if key not in used:
            detail = _unused_row(key, line, sampled, max_frames)
            if not settings.skip_bad:
                raise DatasetError(f"{labels_csv}: {detail}")
            rejections.append(
                Rejection(f"{labels_csv}:{line}", None, "missing", detail, csv_line=line)
            )
    _check_given_splits(items)
    counts = {
        "files_found": len(files),
        "csv_rows": 0 if table is None else len(table),
        "patient_id_missing": int(missing_patient),
        "frames_planned": sum(len(i.records) for i in items),
    }
    return items, rejections, counts


def _check_given_splits(items: list[Item]) -> None:
    given: dict[str, set[str]] = {}
    for item in items:
        for record in item.records:
            if record["split"]:
                given.setdefault(record["patient_id"], set()).add(record["split"])
    for patient, splits in given.items():
        if len(splits) > 1:
            raise DatasetError(
                f"labels CSV gives patient {patient} (pseudonym) the splits {sorted(splits)}; "
                "a patient belongs to one split"
            )


def import_dicom(
    dicom: str | Path,
    out: str | Path,
    salt: str,
    settings: ImportSettings | None = None,
    labels: str | Path | None = None,
    max_frames: int = 0,
) -> Path:
    """Import every image frame of a DICOM export into a new dataset directory.

    Args:
        dicom: the export's root folder (walked recursively; DICOMDIR and hidden files skipped).
        out: the dataset directory to create.
        salt: pseudonymisation salt (``uslearn.data.pseudonym.resolve_salt``).
        settings: the shared import settings; None = defaults with ``crop="auto"`` (``preprocess.crop`` "auto" uses the ultrasound
            regions of the file, else the largest non-background region).
        labels: optional labels CSV keyed by ``path`` (relative to ``dicom``) or
            ``sop_instance_uid``, with an optional ``frame``; unlisted frames are unlabelled.
        max_frames: keep at most this many evenly spaced frames of a multi-frame file (0 = all).

    Returns:
        The dataset directory (committed; ``import_report.json`` inside).

    Raises:
        DatasetError: for bad input, or at the first bad file unless ``settings.skip_bad``.
    """
    started = time.perf_counter()
    settings = settings or ImportSettings()
    out, root = Path(out), Path(dicom)
    check_size(settings.preprocess.size)
    inputs = [root, *([labels] if labels else [])]
    check_target(out, settings.overwrite, inputs)
    check_rejected_path(settings.rejected or default_rejected_path(out), inputs)
    decode = functools.partial(decode_file, options=settings.preprocess)
    with Workers(settings.workers) as workers:
        items, rejections, counts = plan_dicom(
            root, Path(labels) if labels else None, salt, settings, max_frames, workers
        )
        capacity = sum(len(item.records) for item in items)
        writer = DatasetWriter(
            out, settings.preprocess.size, capacity, "dicom-import", settings.overwrite, inputs
        )
        return _decode_and_commit(
            items, rejections, counts, decode, workers, writer, settings, max_frames, started
        )


def _decode_and_commit(
    items, rejections, counts, decode, workers, writer, settings, max_frames, started
) -> Path:
    with (
        writer,
        StoreAppender(writer) as appender,
    ):
        records, decode_rejections = decode_all(
            items, decode, appender, workers, settings.skip_bad, "import-dicom"
        )
        report = {"importer": "dicom", **counts, "settings": settings_report(settings)}
        report["settings"]["max_frames"] = max_frames
        return finish_import(
            writer,
            appender,
            records,
            rejections + decode_rejections,
            report,
            settings.splits,
            settings.rejected or default_rejected_path(writer.out),
            started,
        )
