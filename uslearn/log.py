"""One ``uslearn`` logger hierarchy and progress bars that stay quiet where nobody watches."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_ROOT = "uslearn"


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``uslearn`` hierarchy (``uslearn.data.importers`` etc.)."""
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes (a command run
    in-process under a test's capture, or a replaced stderr, never holds a closed stream)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Send ``uslearn`` log records to stderr at INFO (verbosity 0) or DEBUG (>= 1)."""
    logger = logging.getLogger(_ROOT)
    if not any(getattr(h, "_uslearn", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        handler._uslearn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


def progress_enabled() -> bool:
    """Return True when a person watches a terminal: stderr is a TTY and we are not under Ray."""
    if os.environ.get("USLEARN_PROGRESS") in ("0", "1"):
        return os.environ["USLEARN_PROGRESS"] == "1"
    return sys.stderr.isatty() and not under_ray()


def under_ray() -> bool:
    """Return True inside a Ray Train worker, a Tune trial or a Ray job (Ray reports there)."""
    return any(k in os.environ for k in ("RAY_TRAIN_WORKER", "TUNE_ORIG_WORKING_DIR", "RAY_JOB_ID"))


def progress(
    iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T] | tqdm:
    """Return a tqdm progress bar, disabled when ``progress_enabled()`` is False."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not progress_enabled(),
        dynamic_ncols=True,
    )
