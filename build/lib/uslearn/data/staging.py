"""A node-local copy of a dataset, made once per node and dataset version.

On a cluster the datasets sit on shared storage (NFS, EFS), where the random reads of the
image store's memory map that every training batch makes are slow. With ``$USLEARN_STAGE_DIR``
set to a local disk (cluster.yaml's nodes set it), each trial trains on
``<stage>/<fingerprint>/`` instead: the first trial on a node copies the dataset there, and
every later trial on that node (of this study or another) reuses the copy. Keyed by the
dataset's fingerprint, so a changed dataset gets a new copy instead of a stale one.

Safe when several trials on one node start at once: the copy is made under an exclusive lock
(``<stage>/<fingerprint>.lock``) into a temporary sibling directory, checked against the
fingerprint while it is copied, and renamed into place; the others wait for the lock, then
find the finished copy. A process killed while copying leaves only a temporary directory,
which the next one removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from uslearn.data.dataset import MANIFEST, META, STORE, DatasetError
from uslearn.log import get_logger

log = get_logger(__name__)
STAGE_ENV = "USLEARN_STAGE_DIR"
CHUNK = 8 << 20  # bytes per read while copying


def staged_dataset(root: str | os.PathLike, fingerprint: str | None = None) -> str:
    """Return the dataset directory a process should train on: the node-local copy of ``root``
    when ``$USLEARN_STAGE_DIR`` is set (made now if this node has none yet), else ``root``."""
    stage_dir = os.environ.get(STAGE_ENV)
    if not stage_dir:
        return str(root)
    return str(stage_dataset(root, stage_dir, fingerprint)[0])


def stage_dataset(
    root: str | os.PathLike, stage_dir: str | os.PathLike, fingerprint: str | None = None
) -> tuple[Path, bool]:
    """Copy the dataset at ``root`` to ``<stage_dir>/<fingerprint>/`` unless it is there.

    Args:
        root: a dataset directory (manifest.parquet, images.u8, meta.json).
        stage_dir: a directory on node-local disk (created if missing).
        fingerprint: the fingerprint the caller expects (a study's); None = meta.json's.

    Returns:
        ``(path of the local copy, True if this call made it)``.

    Raises:
        DatasetError: ``root`` is not a dataset, its fingerprint differs from the expected
            one or from its files (changed since it was written), or the stage disk lacks
            the space.
    """
    root = Path(root)
    meta_path = root / META
    try:
        meta = json.loads(meta_path.read_text())
        recorded = str(meta["fingerprint"])
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"{meta_path}: cannot read the dataset's fingerprint ({err})") from None
    if fingerprint is not None and fingerprint != recorded:
        raise DatasetError(
            f"{meta_path}: fingerprint {recorded}, but the study started with {fingerprint}: "
            "the dataset changed; start a new run"
        )
    stage = Path(stage_dir)
    stage.mkdir(parents=True, exist_ok=True)
    target = stage / recorded
    if (target / META).is_file():
        return target, False
    with open(stage / f"{recorded}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / META).is_file():  # another process copied it while we waited
            return target, False
        for stale in stage.glob(f".{recorded}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _copy_checked(root, stage, target, recorded)
    return target, True


def _copy_checked(root: Path, stage: Path, target: Path, fingerprint: str) -> None:
    """Copy manifest, store and meta into ``target`` via a temporary sibling; check the hash."""
    files = (root / MANIFEST, root / STORE)
    size = sum(p.stat().st_size for p in files)
    free = shutil.disk_usage(stage).free
    if free < size * 1.05:
        raise DatasetError(
            f"{stage}: {free / 1e9:.1f} GB free, the dataset at {root} needs {size / 1e9:.1f} GB; "
            f"free space or point ${STAGE_ENV} at a larger local disk"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}.partial-", dir=stage))
    try:
        # The fingerprint is a sha256 over the manifest, then the store (dataset.py): hash
        # while copying, so a dataset rewritten under a study is caught, not trained on.
        # A second thread hashes chunk i while this one writes it and reads chunk i + 1
        # (hashlib and file I/O release the GIL); updates stay in order.
        digest = hashlib.sha256()
        with ThreadPoolExecutor(max_workers=1) as hasher:
            for src in files:
                with open(src, "rb") as reader, open(tmp / src.name, "wb") as writer:
                    pending = None
                    while chunk := reader.read(CHUNK):
                        if pending is not None:
                            pending.result()
                        pending = hasher.submit(digest.update, chunk)
                        writer.write(chunk)
                    if pending is not None:
                        pending.result()
        if digest.hexdigest()[:16] != fingerprint:
            raise DatasetError(
                f"{root}: its files hash to {digest.hexdigest()[:16]}, not the fingerprint "
                f"{fingerprint} of its {META}: the dataset changed after it was written"
            )
        shutil.copy2(root / META, tmp / META)  # last: a copy with meta.json is complete
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("staged %s to %s (%.0f MB)", root, target, size / 1e6)
