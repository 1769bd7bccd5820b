"""The dataset directory (docs/CONTRACTS.md): manifest.parquet + images.u8 + meta.json.

    <dataset>/manifest.parquet   one row per image
    <dataset>/images.u8          uint8 memory map, shape (N, H, W), row i = manifest row i
    <dataset>/meta.json          {"format": 1, "classes": [...], "size": H, "source": ...,
                                  "created": ..., "fingerprint": ..., "n_images": N}

Readers open it lazily (the store is memory-mapped, so opening a 90 000-image dataset costs
milliseconds and no RAM copy) and validate it on open; ``Dataset.verify`` checks the files
against the hashes meta.json recorded at write time. Writing is ``uslearn.data.writer``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.errors import EnvError, UserError, is_environment_error

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
# Marks a directory that a writer has not finished (uslearn.data.writer); never a dataset.
PARTIAL_MARKER = ".uslearn-partial"
# The sampled hash of ``Dataset.verify("sample")``: the manifest, the store's size and this many
# evenly spaced blocks of the store (16 MiB read whatever the dataset's size).
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 256, 1 << 16
VERIFY_MODES = ("sample", "full")


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


def sample_hash(manifest_path: Path, store_path: Path) -> str:
    """Return a sha256 (16 hex digits) over the manifest, the store's size and sampled store blocks.

    Reads the manifest and at most SAMPLE_BLOCKS x SAMPLE_BLOCK_BYTES of the store: it catches
    a replaced, truncated or extended store, any manifest edit, and changes that touch a
    sampled block; only ``fingerprint_files`` catches every change.
    """
    digest = hashlib.sha256(Path(manifest_path).read_bytes())
    size = os.path.getsize(store_path)
    digest.update(str(size).encode())
    n_blocks = min(SAMPLE_BLOCKS, -(-size // SAMPLE_BLOCK_BYTES))
    last = max(size - SAMPLE_BLOCK_BYTES, 0)
    offsets = np.linspace(0, last, n_blocks).astype(np.int64) if n_blocks else []
    with open(store_path, "rb") as handle:
        for offset in offsets:
            handle.seek(int(offset))
            digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()[:16]


def integrity_meta(manifest_path: Path, store_path: Path) -> dict[str, str]:
    """Return the meta.json entries that ``Dataset.verify`` checks: fingerprint and sample_hash."""
    return {
        "fingerprint": fingerprint_files(manifest_path, store_path),
        "sample_hash": sample_hash(manifest_path, store_path),
    }


def check_store(images: np.ndarray) -> None:
    """Refuse to read a memory-mapped store that changed since it was mapped (``Dataset.images``).

    A store truncated under a running command (``cp`` over it, ``rsync --inplace``) kills the
    process with SIGBUS on the next read of a missing page, and one rewritten in place feeds it
    other images: a ``stat`` before each batch turns both into one line. Plain arrays pass.

    Raises:
        EnvError: naming the store and what changed (exit 1: the input changed, not the flags).
    """
    opened = getattr(images, "uslearn_store", None)
    if opened is None:
        return
    path, size, mtime_ns, inode = opened
    try:
        now = os.stat(path)
    except OSError as err:
        raise EnvError(f"{path}: vanished while this command read it ({err.strerror})") from None
    if (now.st_size, now.st_mtime_ns, now.st_ino) == (size, mtime_ns, inode):
        return
    what = (
        f"its size went from {size} to {now.st_size} bytes"
        if now.st_size != size
        else "it was rewritten"
        if now.st_ino == inode
        else "it was replaced by another file"
    )
    raise EnvError(
        f"{path}: changed while this command read it ({what}; a copy over the dataset or "
        "'rsync --inplace'?); run the command again once the dataset is complete"
    )


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
        if (root / PARTIAL_MARKER).exists():
            raise DatasetError(
                f"{root}: an unfinished write (its process was stopped before the end); not a "
                "dataset: run the import or generation again (with --overwrite)"
            )
        for name in (MANIFEST, STORE, META):
            if not (root / name).is_file():
                raise DatasetError(
                    f"{root / name}: missing; a dataset directory holds {MANIFEST}, {STORE} and {META}"
                )
        try:
            meta = json.loads((root / META).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{root / META}: not valid JSON ({err})") from err
        if not isinstance(meta, dict):
            raise DatasetError(
                f"{root / META}: expected a JSON object, found {type(meta).__name__}"
            )
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
        manifest = read_manifest(root / MANIFEST)
        validate_manifest(manifest, where=str(root / MANIFEST))
        if len(manifest) != int(meta["n_images"]):
            raise DatasetError(
                f"{root / MANIFEST}: {len(manifest)} rows but {META} says n_images={meta['n_images']}"
            )
        try:
            size = int(meta["size"])
        except (TypeError, ValueError):
            raise DatasetError(
                f"{root / META}: size {meta['size']!r} is not a whole number"
            ) from None
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
        """Return the read-only (N, H, W) uint8 memory map of the image store (what the file
        was when mapped is kept for ``check_store``)."""
        path = self.root / STORE
        images = np.memmap(
            path, dtype=np.uint8, mode="r", shape=(len(self.manifest), self.size, self.size)
        )
        stat = os.stat(path)
        images.uslearn_store = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        return images

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

    def verify(self, mode: str = "sample") -> str:
        """Check the files against the hashes meta.json recorded at write time.

        Args:
            mode: "sample" reads the manifest and 16 MiB of the store (``sample_hash``);
                "full" re-hashes everything (``fingerprint_files``). A dataset written before
                sample hashes existed is checked in full.

        Returns:
            One line saying what was checked.

        Raises:
            DatasetError: naming the dataset when the files changed after writing.
        """
        if mode not in VERIFY_MODES:
            raise DatasetError(f"--verify-data {mode}: expected one of {list(VERIFY_MODES)}")
        manifest, store = self.root / MANIFEST, self.root / STORE
        try:
            if mode == "sample" and "sample_hash" in self.meta:
                recorded, actual = self.meta["sample_hash"], sample_hash(manifest, store)
                what = "sampled hash (manifest + 16 MiB of the store)"
            else:
                recorded, actual = self.fingerprint, fingerprint_files(manifest, store)
                what = "fingerprint (every byte)"
        except OSError as err:
            raise DatasetError(f"{self.root}: cannot read its files ({err})") from err
        if actual != recorded:
            raise DatasetError(
                f"{self.root}: {what} {actual} differs from {META}'s {recorded}: the files "
                "changed after writing; re-import or restore the dataset"
            )
        return f"{self.root}: {what} matches {META}"

    def verify_fingerprint(self) -> None:
        """Recompute the fingerprint from every byte; raise DatasetError if the files changed."""
        self.verify("full")


def read_manifest(path: Path) -> pd.DataFrame:
    """Return the manifest frame of a parquet file.

    Raises:
        DatasetError: when the file is not readable parquet (truncated, corrupt, another format).
    """
    import pyarrow

    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        if is_environment_error(err):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(
            f"{path}: not a readable parquet file ({reason}); the dataset is damaged: "
            "re-import it or restore it from a copy"
        ) from err


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
