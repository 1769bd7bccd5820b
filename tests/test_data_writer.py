"""``uslearn.data.writer``: overwrite only datasets, one writer per target, nothing left by a kill."""

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from uslearn.data.dataset import CLASSES, PARTIAL_MARKER, Dataset, DatasetError
from uslearn.data.target import check_target, clean_leftovers, rename_noreplace
from uslearn.data.writer import DatasetWriter


def manifest(n):
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "patient_id": [f"p{k}" for k in range(n)],
            "exam_id": [f"e{k}" for k in range(n)],
            "split": ["test"] * n,
            **{c: np.zeros(n, np.int8) for c in CLASSES},
        }
    )


def write(out, value=7, n=2, **kw):
    with DatasetWriter(out, 16, n, "test", **kw) as writer:
        writer.write(0, np.full((n, 16, 16), value, np.uint8))
        return writer.commit(manifest(n))


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def gone(pid):
    """Return True when ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(condition, deadline=60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_overwrite_replaces_a_dataset_and_an_empty_folder(tmp_path):
    write(tmp_path / "ds", value=1)
    write(tmp_path / "ds", value=2, overwrite=True)
    assert Dataset.open(tmp_path / "ds").images.max() == 2
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", overwrite=True)
    assert len(Dataset.open(tmp_path / "empty")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]  # no lock, no partial


@pytest.mark.parametrize(
    "make, inputs, message",
    [
        (lambda t: (t / "x").mkdir() or (t / "x" / "a.png").write_bytes(b"1"), [], "not a uslearn"),
        (lambda t: (t / "x").write_text("notes"), [], "is a file"),
        (lambda t: write(t / "real") and (t / "x").symlink_to(t / "real"), [], "symbolic link"),
        (lambda t: write(t / "x"), ["x"], "is the input"),
        (lambda t: write(t / "x"), ["x/images"], "contains the input"),
        (lambda t: write(t / "in" / "x"), ["in"], "is inside the input"),
    ],
)
def test_overwrite_refuses_anything_but_a_dataset_outside_the_inputs(
    tmp_path, make, inputs, message
):
    make(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    out = tmp_path / "in" / "x" if "inside" in message else tmp_path / "x"
    with pytest.raises(DatasetError, match=message):
        write(out, overwrite=True, inputs=[tmp_path / i for i in inputs])
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_root_home_and_current_folder_and_their_parents_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out, what in (
        ("/", "the root folder"),
        (".", "the current folder"),
        ("..", "a parent of the current folder"),
        (os.path.expanduser("~"), "the home folder"),
    ):
        with pytest.raises(DatasetError, match=what):
            check_target(out, overwrite=True)


def test_a_second_writer_of_the_same_target_fails_at_once(tmp_path):
    with DatasetWriter(tmp_path / "ds", 16, 1, "a") as first:
        with pytest.raises(DatasetError, match=rf"another uslearn command \(pid {os.getpid()}\)"):
            DatasetWriter(tmp_path / "ds", 16, 1, "b")
        first.write(0, np.zeros((1, 16, 16), np.uint8))
        first.commit(manifest(1))
    write(tmp_path / "ds", overwrite=True)  # the lock was released


def test_a_target_that_appears_meanwhile_is_not_replaced(tmp_path):
    with DatasetWriter(tmp_path / "ds", 16, 1, "a") as writer:
        (tmp_path / "ds").mkdir()  # e.g. created by hand or another tool meanwhile
        (tmp_path / "ds" / "mine.txt").write_text("keep me")
        writer.write(0, np.zeros((1, 16, 16), np.uint8))
        with pytest.raises(DatasetError, match="appeared while"):
            writer.commit(manifest(1))
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_rename_noreplace_refuses_even_an_empty_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # os.rename would silently replace it
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_leftovers_of_dead_writers_go_and_others_stay(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    for name, owner in (("dead", dead), ("alive", alive)):
        path = tmp_path / f".ds.partial-{name}"
        path.mkdir()
        (path / PARTIAL_MARKER).write_text(json.dumps({"pid": owner, "host": os.uname()[1]}))
    (tmp_path / ".ds.partial-unmarked").mkdir()
    (tmp_path / ".ds.partial-unmarked" / "data").write_text("not provably ours")
    (tmp_path / ".ds.partial-empty").mkdir()
    removed = clean_leftovers(tmp_path / "ds")
    assert sorted(p.name for p in removed) == [".ds.partial-dead", ".ds.partial-empty"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".ds.partial-alive",
        ".ds.partial-unmarked",
    ]


def test_a_previous_dataset_left_by_a_killed_overwrite_is_restored(tmp_path):
    write(tmp_path / "ds", value=5)
    os.rename(tmp_path / "ds", tmp_path / f".ds.old-{dead_pid()}-1")  # killed between renames
    with pytest.raises(DatasetError, match="already exists"):
        write(tmp_path / "ds")  # restored first, so a plain write must not replace it
    assert Dataset.open(tmp_path / "ds").images.max() == 5
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_an_unfinished_directory_is_never_opened_as_a_dataset(tmp_path):
    write(tmp_path / "ds")
    (tmp_path / "ds" / PARTIAL_MARKER).write_text("{}")
    with pytest.raises(DatasetError, match="unfinished write"):
        Dataset.open(tmp_path / "ds")


KILLED_WRITER = """
import multiprocessing, os, sys, time
import numpy as np
from uslearn.data.writer import DatasetWriter
from uslearn.data.ingest import Workers

if __name__ == "__main__":
    writer = DatasetWriter(sys.argv[1], 16, 4, "test")
    writer.write(0, np.zeros((2, 16, 16), np.uint8))
    # A renderer forked while the writer is open (as the phantom's) and the import's workers.
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    forked.start()
    with Workers(2) as workers:
        pids = {workers.pool.submit(os.getpid).result() for _ in range(8)}
        print(forked.pid, *pids, flush=True)
        time.sleep(120)
"""


def test_a_killed_write_leaves_nothing_accepted_its_workers_die_and_the_next_write_cleans(
    tmp_path,
):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER))
    out = tmp_path / "out" / "ds"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    children = [int(p) for p in proc.stdout.readline().split()] if ready else []
    proc.send_signal(signal.SIGKILL)
    assert len(children) >= 2, "the writer did not start its workers"
    proc.wait()
    assert wait_until(lambda: all(gone(pid) for pid in children)), "orphaned worker processes"
    (partial,) = (tmp_path / "out").glob(".ds.partial-*")
    with pytest.raises(DatasetError, match="unfinished write|missing"):
        Dataset.open(partial)
    assert not out.exists()
    write(out)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ds"]
