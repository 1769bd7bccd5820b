"""Node-local staging of a dataset: one copy per node and fingerprint, however many trials start.

Real processes and real file locks; the dataset is the tiny phantom.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from uslearn.data.dataset import STORE, Dataset, DatasetError
from uslearn.data.staging import STAGE_ENV, stage_dataset, staged_dataset


def _stage(root: str, stage: str, queue) -> None:
    path, copied = stage_dataset(root, stage)
    queue.put((str(path), copied))


def _blocked_flocks(inode: int) -> int:
    """Return how many processes wait for a flock on the file with ``inode`` (/proc/locks)."""
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: -> FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
        if "->" not in fields:
            continue
        at = fields.index("->")
        if fields[at + 1] == "FLOCK" and int(fields[at + 5].split(":")[-1]) == inode:
            waiting += 1
    return waiting


def test_two_processes_starting_at_once_make_one_copy(tiny_phantom, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    fingerprint = Dataset.open(tiny_phantom).fingerprint
    lock_path = stage / f"{fingerprint}.lock"
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    with open(lock_path, "w") as lock:
        # Hold the lock so that both processes are inside stage_dataset, waiting, at once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        workers = [
            context.Process(target=_stage, args=(str(tiny_phantom), str(stage), queue))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 120
        while _blocked_flocks(os.stat(lock_path).st_ino) < 2:
            assert time.monotonic() < deadline, "the two processes never waited for the lock"
            assert all(w.is_alive() for w in workers)
            time.sleep(0.1)
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    results = [queue.get() for _ in workers]
    assert sorted(copied for _, copied in results) == [False, True]
    assert {path for path, _ in results} == {str(stage / fingerprint)}
    assert sorted(p.name for p in stage.iterdir()) == [fingerprint, f"{fingerprint}.lock"]
    copy = Dataset.open(stage / fingerprint)
    copy.verify_fingerprint()
    assert copy.fingerprint == fingerprint and len(copy) == len(Dataset.open(tiny_phantom))


def test_a_copy_left_half_done_by_a_killed_process_is_replaced(tiny_phantom, tmp_path):
    stage = tmp_path / "stage"
    fingerprint = Dataset.open(tiny_phantom).fingerprint
    partial = stage / f".{fingerprint}.partial-dead"
    partial.mkdir(parents=True)
    (partial / STORE).write_bytes(b"\0" * 100)
    path, copied = stage_dataset(tiny_phantom, stage)
    assert copied and not partial.exists()
    Dataset.open(path).verify_fingerprint()


def test_a_dataset_changed_after_writing_is_not_staged(tiny_phantom, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_phantom, changed)
    with open(changed / STORE, "r+b") as store:
        store.seek(100)
        store.write(b"\x7f")
    stage = tmp_path / "stage"
    with pytest.raises(DatasetError, match="dataset changed after it was written"):
        stage_dataset(changed, stage)
    assert [p.name for p in stage.iterdir()] == [f"{Dataset.open(changed).fingerprint}.lock"]
    with pytest.raises(DatasetError, match="the study started with"):
        stage_dataset(tiny_phantom, stage, fingerprint="0123456789abcdef")


def test_staging_is_off_unless_the_environment_asks(tiny_phantom, tmp_path, monkeypatch):
    monkeypatch.delenv(STAGE_ENV, raising=False)
    assert staged_dataset(tiny_phantom) == str(tiny_phantom)
    monkeypatch.setenv(STAGE_ENV, str(tmp_path / "local"))
    fingerprint = Dataset.open(tiny_phantom).fingerprint
    assert staged_dataset(tiny_phantom, fingerprint) == str(tmp_path / "local" / fingerprint)
