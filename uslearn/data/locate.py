"""``uslearn data locate``: which source file an image id came from, for the operator only.

Nothing persisted by an import holds a source path (docs/DATA.md, "Privacy"); an image id
(``i-…``) is the salted hash of the file's path (folder import) or of its SOPInstanceUID (DICOM,
``-f<n>`` added per frame), so whoever holds the salt and the source folder can find the file
again by recomputing the hashes. The answer is printed, never written.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Sequence
from pathlib import Path

from uslearn.data.dataset import DatasetError
from uslearn.data.pseudonym import pseudonym

IMAGE_ID = re.compile(r"^i-[0-9a-f]{16}(-f\d+)?$")


def read_ids(ids: Sequence[str], rejected: Path | None = None) -> list[str]:
    """Return the image ids given on the command line plus those of a rejected list, checked.

    Raises:
        DatasetError: for an id that is not an image pseudonym, or an unreadable list.
    """
    found = list(ids)
    if rejected is not None:
        try:
            with open(rejected, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"--rejected {rejected}: cannot read it ({err})") from err
        if rows and "image_id" not in rows[0]:
            raise DatasetError(f"--rejected {rejected}: no image_id column (not a rejected list)")
        found += [row["image_id"] for row in rows if row.get("image_id")]
    if not found:
        raise DatasetError("give image ids (i-...) or --rejected LIST")
    for image_id in found:
        if not IMAGE_ID.match(image_id):
            raise DatasetError(f"{image_id!r} is not an image id (expected i- and 16 hex digits)")
    return found


def _dicom_ids(task: tuple[str, str], salt: str) -> list[str]:
    """Return the image pseudonyms an import gives a file: by SOPInstanceUID and by path."""
    from uslearn.data.dicom import read_dicom

    path, rel = task
    ids = [pseudonym("image", f"file:{rel}", salt)]
    try:
        ds = read_dicom(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        sop = str(ds.get("SOPInstanceUID", "")).strip()
    except Exception:  # noqa: BLE001 - any unreadable file is found by its path pseudonym
        sop = ""
    ids.append(pseudonym("image", sop or f"file:{path}", salt))
    return ids


def locate(
    ids: Sequence[str],
    salt: str,
    images: Path | None = None,
    dicom: Path | None = None,
    workers: int = 1,
) -> dict[str, str]:
    """Return {image id: source path relative to the folder} for the ids found.

    Args:
        ids: image ids (``i-…``, optionally ``-f<frame>``).
        salt: the salt of the import.
        images: the folder of a folder import (ids are hashes of relative paths).
        dicom: the folder of a DICOM import (ids are hashes of SOPInstanceUIDs; headers are read).
        workers: processes reading DICOM headers.
    """
    from uslearn.data.dicom import list_files
    from uslearn.data.importers import list_images
    from uslearn.data.ingest import Workers

    root = images if images is not None else dicom
    if root is None or not Path(root).is_dir():
        raise DatasetError(f"{root}: not a folder")
    root = Path(root)
    frames: dict[str, list[str]] = {}
    for image_id in ids:
        frames.setdefault(re.sub(r"-f\d+$", "", image_id), []).append(image_id)
    found: dict[str, str] = {}
    if images is not None:
        for rel in list_images(root):
            for image_id in frames.get(pseudonym("image", rel, salt), []):
                found[image_id] = rel
        return found
    files = list_files(root)
    scan = functools.partial(_dicom_ids, salt=salt)
    with Workers(workers) as pool:
        for rel, hashes in zip(files, pool.map(scan, [(str(root / rel), rel) for rel in files])):
            for digest in hashes:
                for image_id in frames.get(digest, []):
                    found[image_id] = rel
    return found
