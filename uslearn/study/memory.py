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
