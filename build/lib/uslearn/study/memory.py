"""Give the memory a finished trial freed back to the operating system.

Tune reuses a trial process for the next trial (``reuse_actors``) and runs every trial's
function on a new thread. glibc's malloc gives each new thread one of its arenas (at most
8 per core) in turn, and keeps what a thread freed in that thread's arena instead of
returning it to the system: tensors of a few MB (activations of one batch) come from the
arenas, not from their own ``mmap``, once a larger one has been freed. So each trial left its
training working set behind in another arena and the process grew by that much per trial
(≈ 0.2 GB per tiny-phantom trial, ≈ 0.5 GB per cpu-demo trial) while the memory it actually
used stayed constant (``benchmarks/trial_memory.py``, docs/STUDIES.md). ``malloc_trim``
returns the free pages of every arena, so each trial starts from what the process really
holds.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from dataclasses import dataclass
from pathlib import Path


@functools.cache
def _malloc_trim():
    """Return glibc's ``malloc_trim`` from the running process, or None (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool | None:
    """Collect unreachable Python objects, then return the free heap pages to the system.

    Returns:
        True if glibc released memory, False if it had none to release, None where the C
        library has no ``malloc_trim`` (nothing to do there).
    """
    # Reference cycles (a traceback's frames holding the model, say) keep tensors alive
    # until the collector runs; collect them first so that their memory is free to return.
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return None
    return bool(trim(0))


@dataclass(frozen=True)
class ProcessMemory:
    """What one process holds, in MiB.

    Attributes:
        rss: resident pages, the shared libraries' it touched included (≈ 0.2 GB for torch).
        anon: anonymous pages: its own heap and stacks, where retained memory shows.
    """

    rss: int
    anon: int


def process_memory(pid: int | str = "self") -> ProcessMemory | None:
    """Return what process ``pid`` holds (``/proc/<pid>/smaps_rollup``).

    Returns:
        None when the process is gone or the system has no such file (not Linux).
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Anonymous"):
            kib[name] = int(rest.split()[0])
    if "Rss" not in kib:
        return None
    return ProcessMemory(rss=kib["Rss"] // 1024, anon=kib.get("Anonymous", 0) // 1024)
