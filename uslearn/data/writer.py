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
import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
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
from uslearn.errors import EnvError, describe_os_error, is_environment_error
from uslearn.files import fsync_dir, fsync_file
from uslearn.log import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_RENAME_NOREPLACE = 1
_open_writers = 0  # DatasetWriters open in this process (forked children die with it meanwhile)


def normalise(path: str | os.PathLike) -> Path:
    """Return ``path`` absolute with ``.`` and ``..`` removed (the last link is not followed)."""
    return Path(os.path.abspath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_dataset_dir(path: Path) -> bool:
    """Return True when ``path`` holds a meta.json that a uslearn writer wrote (format, classes)."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" in meta and "classes" in meta


def check_target(
    out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike] = (), flag: str = "--out"
) -> None:
    """Refuse a target that would lose or mix a user's files; return None when it is safe.

    Raises:
        DatasetError: one line naming the path and the rule (nothing has been touched).
    """
    out = normalise(out)
    real = out.resolve()
    for given in inputs:
        source = normalise(given).resolve()
        if _inside(real, source):
            where = "is" if real == source else "is inside"
            raise DatasetError(
                f"{flag} {out} {where} the input {given}; write the dataset outside the input"
            )
        if _inside(source, real):
            raise DatasetError(
                f"{flag} {out} contains the input {given}; write the dataset outside the input"
            )
    protected = {Path("/"): "the root folder"}
    with contextlib.suppress(OSError):  # a deleted current folder
        protected[Path.cwd().resolve()] = "the current folder"
    with contextlib.suppress(RuntimeError, KeyError):
        protected[Path.home().resolve()] = "the home folder"
    for folder, name in protected.items():
        if _inside(folder, real):
            what = name if folder == real else f"a parent of {name}"
            raise DatasetError(f"{flag} {out} is {what}; give a new folder for the dataset")
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise DatasetError(
            f"{out}: already exists; choose another {flag} or pass --overwrite "
            "(which replaces only a uslearn dataset)"
        )
    if out.is_symlink():
        raise DatasetError(f"{out}: is a symbolic link; give the real path to replace it")
    if not out.is_dir():
        raise DatasetError(
            f"{out}: is a file, not a dataset; --overwrite replaces only a uslearn dataset"
        )
    if not any(out.iterdir()) or is_dataset_dir(out):
        return
    raise DatasetError(
        f"{out}: is not a uslearn dataset (no meta.json of one); --overwrite replaces only a "
        "dataset directory, nothing was touched"
    )


def _process_start(pid: int) -> str:
    """Return a token of when process ``pid`` started ("" where /proc is absent)."""
    try:
        # Field 22 (starttime) follows the parenthesised command name, which may hold spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_record() -> dict:
    """Return what identifies this process as the owner of a temporary directory."""
    pid = os.getpid()
    return {"pid": pid, "start": _process_start(pid), "host": socket.gethostname()}


def owner_alive(owner: dict) -> bool:
    """Return False only when ``owner`` (``owner_record``) is provably dead on this host."""
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process (shared storage): cannot tell, keep it
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = owner.get("start", "")
    return not start or _process_start(pid) in ("", start)  # a reused pid started later


def read_owner(path: Path) -> dict | None:
    """Return the owner record of a temporary directory's marker, None if it has none."""
    try:
        owner = json.loads((path / PARTIAL_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def target_lock(out: Path) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``out`` for the block; yield the lock file's path.

    Raises:
        DatasetError: when another process holds it (its pid is named).
    """
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatasetError(
                f"{out}: another uslearn command (pid {holder}) is writing it; wait for it to "
                "finish or choose another --out"
            ) from None
        # The holder before us unlinks the file when done: make sure ours is still the one there.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what killed writes into ``out`` left; return the paths removed or restored.

    Call with the target lock held: every live writer of ``out`` holds that lock, so what is
    found belongs to a process that ended. A ``.<name>.partial-*`` directory goes when its
    marker names a dead owner (or it is empty); a ``.<name>.old-<pid>-<start>`` directory (the
    previous dataset, renamed away during an overwrite) of a dead owner is renamed back when
    the target is missing and removed when the new dataset is there. Anything else stays.
    """
    handled = []
    prefix = glob.escape(f".{out.name}")
    for path in sorted(out.parent.glob(f"{prefix}.partial-*")):
        owner = read_owner(path)
        empty = path.is_dir() and not any(path.iterdir())
        if empty or (owner is not None and not owner_alive(owner)):
            shutil.rmtree(path, ignore_errors=True)
            handled.append(path)
    for path in sorted(out.parent.glob(f"{prefix}.old-*")):
        pid, _, start = path.name.rsplit(".old-", 1)[1].partition("-")
        owner = {"pid": pid if pid.isdigit() else 0, "start": start, "host": socket.gethostname()}
        if not pid.isdigit() or owner_alive(owner):
            continue
        if os.path.lexists(out):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, out)
            log.warning("%s: restored the previous dataset that a killed overwrite left", out)
        handled.append(path)
    return handled


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; raise FileExistsError if ``target`` exists, atomically.

    Linux's ``renameat2(RENAME_NOREPLACE)`` makes the test and the rename one step; elsewhere
    (or on file systems without it) the test comes just before the rename, which the target
    lock makes safe among uslearn writers.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            at_fdcwd = -100
            result = renameat2(
                at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), _RENAME_NOREPLACE
            )
            if result == 0:
                return
            code = ctypes.get_errno()
            if code not in (errno.EINVAL, errno.ENOSYS):
                raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


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
