"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero.

- ``UserError`` (exit 2): bad input or an unmet precondition; the message names the
  file/line/field and what was expected.
- ``EnvError`` (exit 1): the machine, not the input, stopped the command: disk full, permission
  denied, a read-only or vanished folder. The message names the path and what was kept.
"""

from __future__ import annotations

import errno

# OSError numbers that describe the environment rather than a bug or a bad argument.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
    }
)


class UserError(Exception):
    """Bad input or an unmet precondition; the message names the file/line/field and what was expected."""


class EnvError(Exception):
    """Disk full, permission denied or a similar fault of the machine; the message names the path."""


def is_environment_error(err: BaseException) -> bool:
    """Return True when ``err`` is an OSError caused by the environment (ENVIRONMENT_ERRNOS)."""
    return isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS


def describe_os_error(err: OSError, path: object = None, doing: str = "") -> str:
    """Return one line naming the path and the system's reason, e.g. ``/x: no space left on device``.

    Args:
        err: the OSError raised.
        path: the path to name when ``err`` carries none (``os.pwrite`` errors carry none).
        doing: what was being done, e.g. "writing the image store".
    """
    where = err.filename if err.filename is not None else path
    reason = (err.strerror or str(err)).lower()
    text = f"{where}: {reason}" if where is not None else reason
    return f"{text} while {doing}" if doing else text
