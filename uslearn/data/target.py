"""Where a write may go, and who holds it: the target rules shared by every uslearn writer.

``check_output`` refuses an output that would lose or mix a user's files (docs/DATA.md, "What
an import guarantees"): the one rule of every command that writes; ``target_lock`` makes one writer per target; the owner records and
``clean_leftovers`` tell the leftovers of a killed write from a live one's; ``rename_noreplace``
puts a finished write in place without replacing what appeared meanwhile. The dataset writer
(``uslearn.data.writer``), ``data split`` and ``uslearn train --out`` use the lock and cleanup.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from uslearn.data.dataset import META, PARTIAL_MARKER, DatasetError
from uslearn.log import get_logger

log = get_logger(__name__)

_RENAME_NOREPLACE = 1


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


@dataclass(frozen=True)
class Output:
    """What a writer puts at its ``--out``, as ``check_output`` needs to know it.

    Attributes:
        name: the kind, in messages ("a uslearn dataset", "a predictions file").
        folder: True for a folder, False for one file.
        not_ours: given an existing target, "" when this writer wrote it (so ``--overwrite``
            may replace it), else why not ("no meta.json of one").
    """

    name: str
    folder: bool
    not_ours: Callable[[Path], str]


def _dataset_or_empty(path: Path) -> str:
    if not any(path.iterdir()) or is_dataset_dir(path):
        return ""
    return "is not a uslearn dataset (no meta.json of one)"


DATASET = Output("a uslearn dataset", True, _dataset_or_empty)

# Every PNG a uslearn command writes says so in its Software text chunk: a figure may be
# replaced, a user's image with the same name may not.
PNG_SOFTWARE = "uslearn"


def uslearn_png(path: Path) -> str:
    """Return "" when ``path`` is a PNG that uslearn wrote (``PNG_SOFTWARE``), else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            ours = image.format == "PNG" and image.info.get("Software") == PNG_SOFTWARE
    except (OSError, ValueError, SyntaxError):
        ours = False
    return "" if ours else "is not a PNG figure that uslearn wrote"


FIGURE = Output("a uslearn PNG figure", False, uslearn_png)


def check_output(
    out: str | os.PathLike,
    overwrite: bool,
    kind: Output,
    inputs: Sequence[str | os.PathLike | None] = (),
    flag: str = "--out",
) -> None:
    """Refuse an output that would lose or mix a user's files; return None when it is safe.

    The one rule of every uslearn writer (dataset imports, ``predict``, ``curate``,
    ``report``, ``train --out``, ``data gallery``): an output is never an input, inside one
    or around one (symbolic links resolved), never the root, current or home folder, and an
    existing one is replaced only with ``overwrite`` and only when it is ``kind``'s own.

    Raises:
        DatasetError: one line naming the flag, the path and the rule (nothing was touched).
    """
    out = normalise(out)
    real = out.resolve()
    for given in inputs:
        if not given:  # None or "": an input the command was not given
            continue
        source = normalise(given).resolve()
        if _inside(real, source) or _inside(source, real):
            where = "is" if real == source else "is inside" if _inside(real, source) else "contains"
            raise DatasetError(f"{flag} {out} {where} the input {given}; write it elsewhere")
    protected = {Path("/"): "the root folder"}
    with contextlib.suppress(OSError):  # a deleted current folder
        protected[Path.cwd().resolve()] = "the current folder"
    with contextlib.suppress(RuntimeError, KeyError):
        protected[Path.home().resolve()] = "the home folder"
    for folder, name in protected.items():
        if _inside(folder, real):
            what = name if folder == real else f"a parent of {name}"
            raise DatasetError(f"{flag} {out} is {what}; give a new path for {kind.name}")
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise DatasetError(
            f"{flag} {out}: already exists; choose another path or pass --overwrite "
            f"(which replaces only {kind.name})"
        )
    if out.is_symlink():
        raise DatasetError(f"{flag} {out}: is a symbolic link; give the real path to replace it")
    if out.is_dir() != kind.folder:
        shape = "a folder" if out.is_dir() else "a file"
        raise DatasetError(
            f"{flag} {out}: is {shape}, not {kind.name}; --overwrite replaces only {kind.name}"
        )
    why = kind.not_ours(out)
    if why:
        raise DatasetError(
            f"{flag} {out}: {why}; uslearn replaces only {kind.name} there, nothing was touched"
        )


def check_target(
    out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike] = (), flag: str = "--out"
) -> None:
    """``check_output`` for a dataset directory (the importers, the phantom, the writer)."""
    check_output(out, overwrite, DATASET, inputs, flag)


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
