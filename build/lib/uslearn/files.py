"""Files replaced whole or not at all: a temporary sibling, fsync, then a rename over the target.

A reader (a resumed run, a restored trial, a user) sees a file's previous content or its new
content, never half of it. A fault of the machine (disk full, a file size limit, permission
denied) removes the temporary sibling, leaves the target as it was, and raises an ``EnvError``
naming the target (the CLI prints it as one line, exit 1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from uslearn.errors import EnvError, describe_os_error, is_environment_error


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to the disk where the file system allows it."""
    with contextlib.suppress(OSError):
        fsync_file(path)


class _Recording:
    """A binary file that remembers the OSError its ``write`` raised.

    ``torch.save`` turns a failed write (disk full) into a RuntimeError without the errno;
    ``replacing`` raises the recorded error instead, so the message names the fault.
    """

    def __init__(self, handle: BinaryIO):
        self._handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as err:
            self.error = err
            raise

    def sync(self) -> None:
        """Flush and fsync now (a full disk may show only here), before the block ends."""
        self.flush()
        try:
            os.fsync(self._handle.fileno())
        except OSError as err:
            self.error = err
            raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike, what: str) -> Iterator[_Recording]:
    """Yield a binary file whose content replaces ``path`` when the block ends without error.

    The data goes to ``.<name>.tmp-<pid>`` beside ``path``; it is fsynced and renamed over
    ``path`` only after the block ends, so an error (or a kill) leaves ``path`` as it was.

    Args:
        path: the file to write or replace.
        what: what the file is, for the error message ("the checkpoint").

    Raises:
        EnvError: disk full, a file size limit, permission denied (the message names ``path``
            and says that its previous content is unchanged); other errors pass unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as handle:
                recording = _Recording(handle)
                try:
                    yield recording
                except Exception:
                    if recording.error is not None:
                        raise recording.error from None
                    raise
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(path.parent)
    except OSError as err:
        if not is_environment_error(err):
            raise
        kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"
        bare = OSError(err.errno, err.strerror)  # name the target, not the temporary file
        raise EnvError(f"{describe_os_error(bare, path, f'writing {what}')} ({kept})") from err


def write_text(path: str | os.PathLike, text: str, what: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; see ``replacing`` for the errors."""
    with replacing(path, what) as handle:
        handle.write(text.encode("utf-8"))


def copy_file(source: str | os.PathLike, target: str | os.PathLike, what: str) -> None:
    """Replace ``target`` with a copy of ``source`` atomically; see ``replacing`` for the errors."""
    with replacing(target, what) as handle, open(source, "rb") as origin:
        shutil.copyfileobj(origin, handle, 1 << 20)
