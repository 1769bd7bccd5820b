"""Writing a dataset directory so that nothing a user had is lost or silently replaced.

``DatasetWriter`` streams images into a temporary sibling directory and, at ``commit``, renames
it into place. Around that, four guarantees (docs/DATA.md, "What an import guarantees"):

- **Overwrite only a dataset.** ``--overwrite`` replaces only an empty directory or a uslearn
  dataset (its meta.json says so) that is neither an input, inside one, nor a parent of one,
  and never ``/``, the home folder, the current folder or one of their parents. Anything else
  is refused before a byte is written.
- **One writer per target.** A lock file beside the target (``.<name>.lock``, ``flock``) is
  held from the start of the write to its end, so a second command writing the same place
  fails at once with one line. The final rename refuses to replace a target that appeared
  meanwhile (``renameat2(RENAME_NOREPLACE)`` on Linux).
- **A killed write leaves nothing a command accepts.** The temporary directory
  (``.<name>.partial-*``) holds a marker naming its owner process; ``Dataset.open`` refuses a
  directory with that marker, and the next write into the same place removes the leftovers
  whose owner is dead. Processes forked while a writer is open, and the import's decoding
  workers, are killed with their parent (Linux ``PR_SET_PDEATHSIG``).
- **Environment faults are one line.** Disk full or permission denied while writing removes
  the temporary directory and raises ``EnvError`` naming the target (exit 1).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.data.dataset import (
    CLASSES,
    FORMAT_VERSION,
    MANIFEST,
    MAX_SIZE,
    META,
    MIN_SIZE,
    PARTIAL_MARKER,
    STORE,
    DatasetError,
    integrity_meta,
    validate_manifest,
)
from uslearn.data.target import (
    check_target,
    clean_leftovers,
    normalise,
    owner_record,
    rename_noreplace,
    target_lock,
)
from uslearn.errors import EnvError, describe_os_error, is_environment_error
from uslearn.files import fsync_dir, fsync_file
from uslearn.log import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_open_writers = 0  # DatasetWriters open in this process (forked children die with it meanwhile)


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (no-op on other systems)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _after_fork_in_child() -> None:
    # Workers forked while a dataset is being written (the phantom's renderers) must not
    # outlive a killed parent.
    if _open_writers > 0:
        die_with_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DatasetWriter:
    """Streams images into a new dataset directory; nothing appears at ``out`` until ``commit``.

    Usage::

        with DatasetWriter(out, size=64, capacity=n, source="phantom") as writer:
            writer.write(start_row, images)        # (n, size, size) uint8 blocks, any order
            writer.commit(manifest)                # validates, fingerprints, renames into place

    Leaving the ``with`` block without ``commit`` (an exception, Ctrl-C) removes the temporary
    directory, so the previous contents of ``out`` (if any) stay as they were.

    Args:
        out: the dataset directory to create (or, with ``overwrite``, replace).
        size: side of the stored square images.
        capacity: most rows that will be written.
        source: recorded in meta.json ("folder-import", "phantom:demo", ...).
        overwrite: allow replacing an empty directory or a uslearn dataset at ``out``.
        inputs: paths the data is read from; ``out`` may not be, contain or lie inside one.

    Raises:
        DatasetError: for a target that ``check_target`` refuses, or one being written by
            another process.
        EnvError: when the disk or the permissions refuse the temporary directory.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        size: int,
        capacity: int,
        source: str,
        overwrite: bool = False,
        inputs: Sequence[str | os.PathLike] = (),
    ):
        global _open_writers
        self.out = normalise(out)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise DatasetError(
                f"--size {size} is out of range; expected {MIN_SIZE}..{MAX_SIZE} pixels"
            )
        self.size, self.capacity, self.source = size, capacity, source
        self.overwrite, self.inputs = overwrite, tuple(inputs)
        self._fd: int | None = None
        self._committed = False
        self.tmp: Path | None = None
        self._lock = None
        check_target(self.out, overwrite, self.inputs)
        lock = target_lock(self.out)
        with self._environment("creating the dataset's folder"):
            self.out.parent.mkdir(parents=True, exist_ok=True)
            lock.__enter__()
        self._lock = lock
        _open_writers += 1
        try:
            with self._environment("preparing the dataset"):
                for path in clean_leftovers(self.out):
                    log.info("cleaned up %s, left by a killed write", path.name)
            # Again, under the lock: the target may have appeared (or been restored) meanwhile.
            check_target(self.out, overwrite, self.inputs)
            with self._environment("preparing the dataset"):
                self.tmp = Path(
                    tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent)
                )
                (self.tmp / PARTIAL_MARKER).write_text(json.dumps(owner_record()))
                # Written with pwrite rather than through a memory map: pages written through a
                # map stay in the process's resident set (≈ 5 GB for 100 000 images at 224 px).
                self._fd = os.open(self.tmp / STORE, os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(self._fd, capacity * size * size)
        except BaseException:
            self.abort()
            raise

    @contextlib.contextmanager
    def _environment(self, doing: str) -> Iterator[None]:
        """Turn disk-full / permission errors into one-line EnvErrors naming the target."""
        try:
            yield
        except OSError as err:
            if not is_environment_error(err):
                raise
            raise EnvError(f"{describe_os_error(err, self.out, doing)} ({self._kept()})") from err

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
        with self._environment("writing the image store"):
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written

    def commit(
        self, manifest: pd.DataFrame, extra_meta: dict | None = None, n_rows: int | None = None
    ) -> Path:
        """Validate ``manifest``, truncate the store to its rows, write meta, rename into place.

        Returns:
            The final dataset directory.

        Raises:
            DatasetError: for a bad manifest, or a target that appeared or changed meanwhile.
            EnvError: disk full or permission denied (nothing is left behind).
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
        with self._environment("writing the dataset"):
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
                **integrity_meta(self.tmp / MANIFEST, self.tmp / STORE),
                **(extra_meta or {}),
            }
            (self.tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            for name in (MANIFEST, STORE, META):
                fsync_file(self.tmp / name)
            self._move_into_place()
        self._committed = True
        return self.out

    def _move_into_place(self) -> None:
        if not self.overwrite and os.path.lexists(self.out):
            raise DatasetError(
                f"{self.out}: appeared while this dataset was being written (not by uslearn); "
                "nothing was replaced"
            )
        check_target(self.out, self.overwrite, self.inputs)  # it may have changed meanwhile
        old = None
        if os.path.lexists(self.out):
            # Keep the old dataset until the new one is in place: old away, new in, old deleted.
            # Its name says whose it is, so that after a kill in between the next write of this
            # target can put it back (clean_leftovers).
            me = owner_record()
            old = self.out.with_name(f".{self.out.name}.old-{me['pid']}-{me['start']}")
            os.rename(self.out, old)
        try:
            rename_noreplace(self.tmp, self.out)
        except FileExistsError:
            kept = ""
            if old is not None:
                kept_at = self.out.with_name(f"{self.out.name}.previous-{os.getpid()}")
                os.rename(old, kept_at)
                kept = f" (the previous dataset is now at {kept_at})"
            raise DatasetError(
                f"{self.out}: appeared while this dataset was being written; nothing was "
                f"replaced{kept}"
            ) from None
        (self.out / PARTIAL_MARKER).unlink()
        fsync_dir(self.out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Remove the temporary directory and release the lock (called when commit never happened)."""
        global _open_writers
        self._close()
        if not self._committed and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None
            _open_writers -= 1

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.abort()
        if isinstance(err, OSError) and is_environment_error(err):
            doing = "writing the dataset"
            raise EnvError(f"{describe_os_error(err, self.out, doing)} ({self._kept()})") from err

    def _kept(self) -> str:
        if self.overwrite and os.path.lexists(self.out):
            return "the previous dataset is unchanged"
        return "nothing was written"
