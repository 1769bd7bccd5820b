"""The labels CSV of an import: one row per image, organ tags separated by ``;``.

Columns (header names are case-insensitive; a column named twice, one not listed here or a
CSV with no rows is refused: each is a mapping mistake that would otherwise go unseen):

    path        image file relative to the input folder (DICOM: or ``sop_instance_uid``)
    patient_id  the hospital's patient identifier (pseudonymised on import, never stored)
    exam_id     the exam / study identifier (pseudonymised; DICOM takes both from the files)
    labels      organ names separated by ';', case-insensitive, e.g. "liver; kidney";
                empty = unlabelled; "other" (no organ of interest visible) only alone
    split       optional: labelled, unlabelled, val or test (kept by ``uslearn data split``)
    frame       optional, DICOM only: 0-based frame of a multi-frame file (empty = every frame)

Every problem is an error naming the file, the CSV line and what was expected: these come
from a systematic mapping mistake that ``--skip-bad`` should not hide.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from uslearn.data.dataset import CLASSES, SPLITS, DatasetError

SEPARATOR = ";"


def parse_labels(text: str, where: str) -> np.ndarray:
    """Return the (C,) int8 multi-hot vector of a labels cell; all -1 when the cell is empty.

    Raises:
        DatasetError: for an unknown organ name (listing the allowed names) or for ``other``
            together with an organ.
    """
    names = [t.strip().lower() for t in str(text).split(SEPARATOR)]
    names = [n for n in names if n]
    if not names:
        return np.full(len(CLASSES), -1, np.int8)
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        hint = " (separate organs with ';')" if any("," in n or "|" in n for n in unknown) else ""
        raise DatasetError(
            f"{where}: unknown organ name {unknown[0]!r}{hint}; allowed: {', '.join(CLASSES)}"
        )
    if "other" in names and len(set(names)) > 1:
        raise DatasetError(
            f"{where}: 'other' means no organ of interest is visible, so it cannot go with "
            f"{', '.join(sorted(set(names) - {'other'}))}"
        )
    vector = np.zeros(len(CLASSES), np.int8)
    for name in names:
        vector[CLASSES.index(name)] = 1
    return vector


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: line {line} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as 'CSV UTF-8' (e.g. iconv -f latin1 -t utf-8)"
        ) from err


def normalise_path(value: str, where: str) -> str:
    """Return a relative POSIX path of a CSV ``path`` cell (``a\\b`` and ``./a/b`` → ``a/b``)."""
    path = PurePosixPath(value.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatasetError(f"{where}: path {value!r} must be relative to the input folder")
    return path.as_posix()


def check_inside(root: Path, rel: str, where: str) -> None:
    """Refuse a file under ``root`` that a symbolic link leads outside it, as a ``..`` path is.

    Raises:
        DatasetError: naming ``where`` and the file (relative to ``root``).
    """
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        raise DatasetError(
            f"{where}: {rel} is a symbolic link leading outside the input folder, like a '..' "
            "path; copy the file into the folder or remove the link"
        )


def _check_header(path: Path, names: list[str], keys: tuple[str, ...]) -> None:
    """Refuse a header naming a column twice or a column this module does not read."""
    # An unnamed column (a trailing comma of a spreadsheet export) holds nothing to read.
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise DatasetError(
            f"{path}, line 1: column(s) {', '.join(twice)} named more than once; name each once"
        )
    known = [*keys, "patient_id", "exam_id", "labels", "split"]
    known += ["frame"] if "sop_instance_uid" in keys else []
    unknown = [n for n in names if n and n not in known]
    if unknown:
        raise DatasetError(
            f"{path}, line 1: unknown column(s) {', '.join(map(repr, unknown))}; expected "
            f"{', '.join(known)} (rename or remove the others)"
        )


def read_labels_csv(
    path: str | Path, keys: tuple[str, ...] = ("path",), need_ids: bool = True
) -> pd.DataFrame:
    """Return the parsed labels CSV: one row per CSV line, in file order.

    Args:
        path: the CSV file.
        keys: acceptable key columns; the first one present is used (DICOM accepts
            ``path`` or ``sop_instance_uid``).
        need_ids: whether ``patient_id`` and ``exam_id`` are required (folder import).

    Returns:
        A frame with columns ``key`` (normalised), ``key_column``, ``line`` (1-based CSV
        line), ``patient_raw``, ``exam_raw`` (may be empty when not needed), ``split``
        ("" when not given), ``frame`` (-1 = every frame) and ``labels`` ((C,) int8 arrays).

    Raises:
        DatasetError: naming the file and line, for every problem in the module docstring
            and for a patient given two different splits.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels CSV not found")
    text = _decode(path)
    try:
        table = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: not a readable CSV ({err})") from err
    header = next(csv.reader(io.StringIO(text)), [])
    _check_header(path, [c.strip().lower() for c in header], keys)
    table.columns = [str(c).strip().lower() for c in header]
    if table.empty:
        raise DatasetError(f"{path}: has a header but no rows; expected one row per image")
    key_column = next((k for k in keys if k in table.columns), None)
    required = ["labels"] + (["patient_id", "exam_id"] if need_ids else [])
    missing = [c for c in required if c not in table.columns]
    if key_column is None or missing:
        wanted = " or ".join(keys) if key_column is None else ""
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(filter(None, [wanted, *missing]))}; "
            f"found {list(table.columns)}; expected {' or '.join(keys)}, "
            f"{'patient_id, exam_id, ' if need_ids else ''}labels[, split]"
        )
    rows = []
    for i, row in enumerate(table.to_dict("records")):
        line = i + 2  # line 1 is the header
        where = f"{path}, line {line}"
        key = row[key_column].strip()
        if not key:
            raise DatasetError(f"{where}: empty {key_column}")
        if key_column == "path":
            key = normalise_path(key, where)
        ids = {c: row.get(c, "").strip() for c in ("patient_id", "exam_id")}
        if need_ids and not all(ids.values()):
            raise DatasetError(f"{where}: patient_id and exam_id must not be empty")
        split = row.get("split", "").strip().lower()
        if split and split not in SPLITS:
            raise DatasetError(
                f"{where}: split {split!r}; expected one of {', '.join(SPLITS)} or empty"
            )
        frame = row.get("frame", "").strip()
        if frame and not frame.isdigit():
            raise DatasetError(f"{where}: frame {frame!r}; expected a frame number >= 0 or empty")
        rows.append(
            {
                "key": key,
                "key_column": key_column,
                "line": line,
                "patient_raw": ids["patient_id"],
                "exam_raw": ids["exam_id"],
                "split": split,
                "frame": int(frame) if frame else -1,
                "labels": parse_labels(row["labels"], where),
            }
        )
    parsed = pd.DataFrame(
        rows,
        columns=[
            "key",
            "key_column",
            "line",
            "patient_raw",
            "exam_raw",
            "split",
            "frame",
            "labels",
        ],
    )
    duplicated = parsed.duplicated(["key", "frame"], keep=False)
    if duplicated.any():
        key = parsed.loc[duplicated, "key"].iloc[0]
        lines = parsed.loc[duplicated & (parsed["key"] == key), "line"].tolist()
        raise DatasetError(
            f"{path}: {key_column} {key!r} appears on lines {lines}; list each image once"
        )
    if need_ids:
        given = parsed[parsed["split"] != ""]
        per_patient = given.groupby("patient_raw")["split"].nunique()
        if (per_patient > 1).any():
            patient = per_patient.index[per_patient > 1][0]
            clash = given[given["patient_raw"] == patient].drop_duplicates("split")
            where = ", ".join(f"line {ln}: {s}" for ln, s in zip(clash["line"], clash["split"]))
            raise DatasetError(
                f"{path}: one patient is given two splits ({where}); a patient belongs to one split"
            )
    return parsed
