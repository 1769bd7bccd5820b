"""The list of what an import did not take (``<out>.rejected.csv``), and how it is shown.

The list is persisted, so it names items by image_id, CSV line and frame, never by source
path: folder names of exports often hold patient names (docs/DATA.md, the privacy rule). The
paths are printed to the operator's terminal only; ``uslearn data locate`` maps an image_id back
to its file.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uslearn.data.target import Output, check_output, normalise

# Expected in any real export and never a reason to stop: they are counted and listed only.
FILTER_REASONS = frozenset({"doppler", "duplicate", "not_dicom"})


@dataclass(frozen=True)
class Rejection:
    """An item or frame that was not imported, and why.

    Attributes:
        source: the file's path relative to the input folder; shown on the terminal only,
            never written to a file (folder names may hold patient names).
        frame: frame number in a multi-frame file, None for single images.
        reason: short key (``unreadable``, ``too_large``...).
        detail: what went wrong, without paths.
        image_id: the image's pseudonym (what ``uslearn data locate`` maps back to the file).
        csv_line: the labels CSV line that listed the item, if any.
    """

    source: str
    frame: int | None
    reason: str
    detail: str
    image_id: str = ""
    csv_line: int | None = None


REJECTED_HEADER = ["image_id", "csv_line", "frame", "reason", "detail"]
# Headers of rejected lists this and earlier versions wrote: only those may be replaced.
_OUR_HEADERS = ("image_id,csv_line,frame,reason,detail", "source,frame,reason,detail")
SHOWN_SKIPPED = 20


def _rejected_list(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        first = None
    return "" if first in _OUR_HEADERS else "exists and is not a uslearn rejected list"


REJECTED_LIST = Output("a uslearn rejected list", False, _rejected_list)


def check_rejected_path(
    path: Path, inputs: Sequence[str | os.PathLike | None], flag: str = "--rejected"
) -> None:
    """Refuse a rejected-list path inside an input or holding a file that is not a rejected
    list (an earlier rejected list is replaced: it describes the run that wrote it).

    Raises:
        DatasetError: naming the path (nothing has been written).
    """
    check_output(path, True, REJECTED_LIST, inputs, flag)


def scrub(text: str, source: str) -> str:
    """Return ``text`` without the source path, its folders or its file name."""
    for part in sorted({source, *Path(source).parts}, key=len, reverse=True):
        if len(part) > 2:
            text = text.replace(part, "<file>")
    return text


def write_rejected(rejections: list[Rejection], path: Path) -> None:
    """Write ``image_id, csv_line, frame, reason, detail`` rows (a header only when none).

    No source path: the list is persisted, and folder names of exports often hold patient
    names. ``uslearn data locate`` maps an image_id back to its file; the terminal showed
    the paths during the import. Written to a temporary file and renamed into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REJECTED_HEADER)
            for r in rejections:
                writer.writerow(
                    [
                        r.image_id,
                        "" if r.csv_line is None else r.csv_line,
                        "" if r.frame is None else r.frame,
                        r.reason,
                        scrub(r.detail, r.source),
                    ]
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def show_skipped(rejections: list[Rejection], rejected_path: Path) -> None:
    """Print the skipped bad items, with their source paths, to the operator's terminal.

    Printed, never logged: paths may hold patient names, and log handlers may persist.
    Filtered items (colour Doppler, duplicates, non-DICOM files) are only counted.
    """
    bad = [r for r in rejections if r.reason not in FILTER_REASONS]
    for r in bad[:SHOWN_SKIPPED]:
        where = r.source if r.frame is None else f"{r.source} (frame {r.frame})"
        print(f"skipped {where}: {r.reason}: {r.detail}", file=sys.stderr)
    if len(bad) > SHOWN_SKIPPED:
        print(f"... and {len(bad) - SHOWN_SKIPPED} more skipped items", file=sys.stderr)
    if bad:
        print(
            f"{len(bad)} skipped item(s) are listed by image_id in {rejected_path} "
            "('uslearn data locate' finds their files)",
            file=sys.stderr,
        )


def default_rejected_path(out: Path) -> Path:
    """Return ``<out>.rejected.csv`` beside the dataset (source paths stay out of the dataset)."""
    out = normalise(out)
    return out.with_name(f"{out.name or 'dataset'}.rejected.csv")
