"""The dataset directory (docs/CONTRACTS.md): manifest.parquet + images.u8 + meta.json.

    <dataset>/manifest.parquet   one row per image
    <dataset>/images.u8          uint8 memory map, shape (N, H, W), row i = manifest row i
    <dataset>/meta.json          {"format": 1, "classes": [...], "size": H, "source": ...,
                                  "created": ..., "fingerprint": ..., "n_images": N}

Readers open it lazily (the store is memory-mapped, so opening a 90 000-image dataset costs
milliseconds and no RAM copy) and validate it on open. Writers stream rows into a memory map in
a temporary sibling directory and rename it into place at the end, so an interrupted import or
generation never leaves a half-written dataset where a finished one is expected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.errors import UserError

# Class order (contract): the paper's table order.
CLASSES: tuple[str, ...] = (
    "liver",
    "gallbladder",
    "other",
    "kidney",
    "pancreas",
    "spleen",
    "bladder",
)
SPLITS: tuple[str, ...] = ("labelled", "unlabelled", "val", "test")
FORMAT_VERSION = 1
MANIFEST = "manifest.parquet"
STORE = "images.u8"
META = "meta.json"
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "exam_id", "split", *CLASSES)
MIN_SIZE, MAX_SIZE = 16, 1024


class DatasetError(UserError, ValueError):
    """A dataset directory or an input that does not meet the contract; the message says where."""


def fingerprint_files(manifest_path: Path, store_path: Path) -> str:
    """Return a sha256 over the manifest file and the image store (first 16 hex digits)."""
    digest = hashlib.sha256()
    for path in (manifest_path, store_path):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    """An opened dataset directory: validated manifest, memory-mapped images, metadata.

    Use ``Dataset.open(path)``; rows of ``manifest`` and ``images`` correspond one to one.
    """

    root: Path
    manifest: pd.DataFrame
    meta: dict

    @classmethod
    def open(cls, root: str | os.PathLike) -> Dataset:
        """Return the dataset at ``root`` after checking it against the contract.

        Raises:
            DatasetError: naming the file and the field that is missing or wrong.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(
                f"{root}: no dataset directory here (expected {MANIFEST}, {STORE}, {META})"
            )
        for name in (MANIFEST, STORE, META):
            if not (root / name).is_file():
                raise DatasetError(
                    f"{root / name}: missing; a dataset directory holds {MANIFEST}, {STORE} and {META}"
                )
        try:
            meta = json.loads((root / META).read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{root / META}: not valid JSON ({err})") from err
        for key in ("format", "classes", "size", "fingerprint", "n_images"):
            if key not in meta:
                raise DatasetError(f"{root / META}: field '{key}' is missing")
        if meta["format"] != FORMAT_VERSION:
            raise DatasetError(
                f"{root / META}: format {meta['format']} is not supported (expected {FORMAT_VERSION})"
            )
        if tuple(meta["classes"]) != CLASSES:
            raise DatasetError(
                f"{root / META}: classes {meta['classes']} differ from the contract order {list(CLASSES)}"
            )
        manifest = pd.read_parquet(root / MANIFEST)
        validate_manifest(manifest, where=str(root / MANIFEST))
        if len(manifest) != int(meta["n_images"]):
            raise DatasetError(
                f"{root / MANIFEST}: {len(manifest)} rows but {META} says n_images={meta['n_images']}"
            )
        size = int(meta["size"])
        expected_bytes = len(manifest) * size * size
        actual_bytes = (root / STORE).stat().st_size
        if actual_bytes != expected_bytes:
            raise DatasetError(
                f"{root / STORE}: {actual_bytes} bytes, expected {expected_bytes} "
                f"({len(manifest)} images of {size}x{size} uint8)"
            )
        return cls(root=root, manifest=manifest.reset_index(drop=True), meta=meta)

    @property
    def size(self) -> int:
        """Return the side length H = W of every stored image."""
        return int(self.meta["size"])

    @property
    def fingerprint(self) -> str:
        """Return the hash of manifest + store recorded at write time (goes into every run)."""
        return str(self.meta["fingerprint"])

    @cached_property
    def images(self) -> np.ndarray:
        """Return the read-only (N, H, W) uint8 memory map of the image store."""
        return np.memmap(
            self.root / STORE,
            dtype=np.uint8,
            mode="r",
            shape=(len(self.manifest), self.size, self.size),
        )

    @cached_property
    def labels(self) -> np.ndarray:
        """Return the (N, C) int8 label matrix in class order; -1 marks an unlabelled row."""
        return self.manifest[list(CLASSES)].to_numpy(dtype=np.int8)

    def indices(self, split: str) -> np.ndarray:
        """Return the row indices of ``split`` (one of SPLITS), in manifest order."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split '{split}'; expected one of {list(SPLITS)}")
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    def __len__(self) -> int:
        return len(self.manifest)

    def verify_fingerprint(self) -> None:
        """Recompute the fingerprint from the files; raise DatasetError if they changed."""
        actual = fingerprint_files(self.root / MANIFEST, self.root / STORE)
        if actual != self.fingerprint:
            raise DatasetError(
                f"{self.root}: fingerprint {actual} differs from {META}'s {self.fingerprint}: files changed after writing"
            )


def validate_manifest(manifest: pd.DataFrame, where: str = "manifest") -> None:
    """Check columns, dtypes and values of a manifest frame; raise DatasetError naming the problem."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise DatasetError(
            f"{where}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}"
        )
    for column in ("image_id", "patient_id", "exam_id", "split"):
        values = manifest[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DatasetError(f"{where}: column '{column}' is empty at row {row}")
    bad_split = ~manifest["split"].isin(SPLITS)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise DatasetError(
            f"{where}: row {row} has split '{manifest['split'].iloc[row]}'; expected one of {list(SPLITS)}"
        )
    for cls in CLASSES:
        values = manifest[cls]
        if not pd.api.types.is_integer_dtype(values):
            raise DatasetError(
                f"{where}: class column '{cls}' has dtype {values.dtype}; expected int8"
            )
        bad = ~values.isin((-1, 0, 1))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"{where}: class column '{cls}' has value {values.iloc[row]} at row {row}; expected -1, 0 or 1"
            )
    labels = manifest[list(CLASSES)].to_numpy()
    partial = (labels == -1).any(axis=1) & (labels != -1).any(axis=1)
    if partial.any():
        row = int(np.flatnonzero(partial)[0])
        raise DatasetError(
            f"{where}: row {row} is partly labelled; a row is either fully labelled (0/1) or all -1"
        )
    if manifest["image_id"].duplicated().any():
        row = int(np.flatnonzero(manifest["image_id"].duplicated().to_numpy())[0])
        raise DatasetError(
            f"{where}: image_id '{manifest['image_id'].iloc[row]}' appears twice (row {row})"
        )


class DatasetWriter:
    """Streams images into a new dataset directory; nothing appears at ``out`` until ``commit``.

    Usage::

        with DatasetWriter(out, size=64, capacity=n, source="phantom") as writer:
            writer.write(start_row, images)        # (n, size, size) uint8 blocks, any order
            writer.commit(manifest)                # validates, fingerprints, renames into place

    Leaving the ``with`` block without ``commit`` (an exception, Ctrl-C) removes the temporary
    directory, so the previous contents of ``out`` (if any) stay as they were.
    """

    def __init__(
        self, out: str | os.PathLike, size: int, capacity: int, source: str, overwrite: bool = False
    ):
        self.out = Path(out)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise DatasetError(
                f"--size {size} is out of range; expected {MIN_SIZE}..{MAX_SIZE} pixels"
            )
        if self.out.exists() and not overwrite:
            raise DatasetError(
                f"{self.out}: already exists; choose another --out or pass --overwrite"
            )
        self.size, self.capacity, self.source = size, capacity, source
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        # Written with pwrite rather than through a memory map: pages written through a map stay
        # in the process's resident set (≈ 5 GB for 100 000 images at 224 px).
        self._fd: int | None = os.open(self.tmp / STORE, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, capacity * size * size)
        self._committed = False

    def write(self, start: int, images: np.ndarray) -> None:
        """Write a block of (n, size, size) uint8 images at rows start..start+n-1."""
        if (
            images.dtype != np.uint8
            or images.ndim != 3
            or images.shape[1:] != (self.size, self.size)
        ):
            raise DatasetError(
                f"image block has shape {images.shape} {images.dtype}; expected (n, {self.size}, {self.size}) uint8"
            )
        if start < 0 or start + len(images) > self.capacity:
            raise DatasetError(
                f"rows {start}..{start + len(images)} exceed the store's capacity {self.capacity}"
            )
        data = np.ascontiguousarray(images).tobytes()
        offset = start * self.size * self.size
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def commit(
        self, manifest: pd.DataFrame, extra_meta: dict | None = None, n_rows: int | None = None
    ) -> Path:
        """Validate ``manifest``, truncate the store to its rows, write meta, rename into place.

        Returns:
            The final dataset directory.
        """
        n_rows = len(manifest) if n_rows is None else n_rows
        if len(manifest) != n_rows or n_rows > self.capacity:
            raise DatasetError(
                f"manifest has {len(manifest)} rows, store holds {n_rows} (capacity {self.capacity})"
            )
        manifest = manifest.reset_index(drop=True).copy()
        for cls in CLASSES:
            manifest[cls] = manifest[cls].astype(np.int8)
        validate_manifest(manifest, where=f"{self.out}/{MANIFEST}")
        os.ftruncate(self._fd, n_rows * self.size * self.size)
        os.fsync(self._fd)
        self._close()
        manifest.to_parquet(self.tmp / MANIFEST, index=False)
        meta = {
            "format": FORMAT_VERSION,
            "classes": list(CLASSES),
            "size": self.size,
            "n_images": n_rows,
            "source": self.source,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": fingerprint_files(self.tmp / MANIFEST, self.tmp / STORE),
            **(extra_meta or {}),
        }
        (self.tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if self.out.exists():
            # Keep the old dataset until the new one is in place: rename old away, new in, delete old.
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        self._committed = True
        return self.out

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Remove the temporary directory (called automatically when commit never happened)."""
        self._close()
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
