"""Destructive operations and killed writers: overwrite rules, locks, leftovers of killed imports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from corpus.world import SALT, Case, World, case, descendants, import_argv, inputs, popen, running

# ------------------------------------------------------------- destructive operations


@case("import --out is the input folder, --overwrite")
def _(w):
    w.export()
    return Case(
        import_argv(w, "--overwrite", out=w.root / "in"), 2, r"is the input", "error", inputs(w)
    )


@case("import --out inside the input folder")
def _(w):
    w.export()
    out = w.root / "in" / "DUPONT_Jean_0" / "ds"
    return Case(import_argv(w, out=out), 2, r"is inside the input", "error", inputs(w))


@case("import --out a parent of the input, --overwrite")
def _(w):
    w.export()
    argv = import_argv(w, "--overwrite", out=w.root)
    return Case(argv, 2, r"contains the input", "error", inputs(w))


@case("import --out . (the current folder), --overwrite")
def _(w):
    w.export()
    (w.root / "work").mkdir()
    (w.root / "work" / "notes.txt").write_text("mine")
    argv = import_argv(w, "--overwrite", out=".")
    return Case(
        argv,
        2,
        r"is the current folder",
        "error",
        [*inputs(w), w.root / "work"],
        cwd=w.root / "work",
    )


@case("import --out /, --overwrite")
def _(w):
    w.export()
    return Case(
        import_argv(w, "--overwrite", out="/"),
        2,
        r"contains the input|root folder",
        "error",
        inputs(w),
    )


@case("import --out $HOME, --overwrite")
def _(w):
    w.export()
    home = w.root / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    argv = import_argv(w, "--overwrite", out=home)
    return Case(
        argv, 2, r"is the home folder", "error", [*inputs(w), home], env={"HOME": str(home)}
    )


@case("import --overwrite an unrelated folder")
def _(w):
    w.export()
    (w.root / "thesis").mkdir()
    (w.root / "thesis" / "chapter1.tex").write_text("years of work")
    argv = import_argv(w, "--overwrite", out=w.root / "thesis")
    return Case(
        argv,
        2,
        r"is not a uslearn dataset.*nothing was touched",
        "error",
        [*inputs(w), w.root / "thesis"],
    )


@case("import --overwrite a file")
def _(w):
    w.export()
    (w.root / "notes.txt").write_text("mine")
    argv = import_argv(w, "--overwrite", out=w.root / "notes.txt")
    return Case(argv, 2, r"is a file", "error", [*inputs(w), w.root / "notes.txt"])


@case("import --out the labels CSV, --overwrite")
def _(w):
    w.export()
    argv = import_argv(w, "--overwrite", out=w.root / "labels.csv")
    return Case(argv, 2, r"is the input .*labels.csv", "error", inputs(w))


@case("import --overwrite a symbolic link to a dataset")
def _(w):
    w.export()
    ds = w.dataset()
    (w.root / "link").symlink_to(ds)
    argv = import_argv(w, "--overwrite", out=w.root / "link")
    return Case(argv, 2, r"symbolic link", "error", [*inputs(w), ds])


@case("import into an existing dataset without --overwrite")
def _(w):
    w.export()
    ds = w.dataset()
    return Case(
        import_argv(w, out=ds), 2, r"already exists.*--overwrite", "error", [*inputs(w), ds]
    )


@case("import --overwrite a dataset (allowed)")
def _(w):
    w.export()
    ds = w.dataset()
    before = (ds / "meta.json").read_text()

    def replaced(output):
        assert (ds / "meta.json").read_text() != before  # new created time and fingerprint

    return Case(
        import_argv(w, "--overwrite", out=ds),
        0,
        r"imported 12 images",
        "ok",
        inputs(w),
        check=replaced,
    )


@case("import-dicom --out is the DICOM folder, --overwrite")
def _(w):
    dicom = w.copy("dicom")
    argv = ["data", "import-dicom", "--dicom", str(dicom), "--out", str(dicom), "--overwrite"]
    argv += ["--salt", SALT, "--size", "32", "--workers", "1"]
    return Case(argv, 2, r"is the input", "error", [dicom])


@case("phantom --overwrite an unrelated folder")
def _(w):
    (w.root / "photos").mkdir()
    (w.root / "photos" / "a.jpg").write_bytes(b"holiday")
    argv = ["data", "phantom", "--preset", "tiny", "--out", str(w.root / "photos"), "--overwrite"]
    return Case(argv, 2, r"is not a uslearn dataset", "error", [w.root / "photos"])


@case("phantom into an existing dataset without --overwrite")
def _(w):
    ds = w.dataset()
    argv = ["data", "phantom", "--preset", "tiny", "--out", str(ds)]
    return Case(argv, 2, r"already exists", "error", [ds])


@case("--rejected is the labels CSV")
def _(w):
    w.export()
    argv = import_argv(w, "--rejected", str(w.root / "labels.csv"))
    return Case(argv, 2, r"--rejected .*labels.csv.*(is|inside) the input", "error", inputs(w))


@case("--rejected is an unrelated file")
def _(w):
    w.export()
    (w.root / "results.csv").write_text("a,b\n1,2\n")
    argv = import_argv(w, "--rejected", str(w.root / "results.csv"))
    return Case(
        argv, 2, r"not a uslearn rejected list", "error", [*inputs(w), w.root / "results.csv"]
    )


@case("gallery --out an input file")
def _(w):
    w.export()
    ds = w.dataset()
    argv = ["data", "gallery", str(ds), "--out", str(w.root / "labels.csv")]
    return Case(
        argv,
        2,
        r"labels.csv: already exists; choose another path or pass --overwrite",
        "error",
        [*inputs(w), ds],
    )


def _two_imports(c: Case, w: World) -> tuple[int, str]:
    procs = [popen(c.argv, c, w) for _ in range(2)]
    results = [(p.wait(timeout=180), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], f"exactly one import must win: {results}"
    return 2, "\n".join(text for _, text in results)


@case("two imports into the same new --out at once", slow=True)
def _(w):
    w.export()
    return Case(
        import_argv(w),
        2,
        r"another uslearn command \(pid \d+\) is writing it|already exists",
        "error",
        inputs(w),
        runner=_two_imports,
    )


# ------------------------------------------------------------------- killed writers


def _killed_import(c: Case, w: World) -> tuple[int, str]:
    """Kill an import of the big export once its workers run; then import the small one."""
    labels = c.argv.index("--labels") + 1
    first = [*c.argv[:labels], str(w.root / "big.csv"), *c.argv[labels + 1 : -2], "--workers", "2"]
    proc = popen(first, c, w)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers = descendants(proc.pid)
        if len(workers) >= 3 and list(w.root.glob(".out.partial-*")):  # fork server + 2
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the import ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 60
    while time.monotonic() < end and any(running(p) for p in workers):
        time.sleep(0.1)
    assert not any(running(p) for p in workers), "workers outlived the killed import"
    (partial,) = w.root.glob(".out.partial-*")
    check = subprocess.run(
        [sys.executable, "-m", "uslearn", "data", "check", str(partial)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert check.returncode == 2 and "unfinished write" in check.stderr, check.stderr
    again = popen(c.argv, c, w)
    return again.wait(timeout=300), again.stdout.read()


@case("SIGKILL of an import with --workers 2, then another import into the same --out", slow=True)
def _(w):
    w.export()
    shutil.copy2(w.root / "labels.csv", w.root / "small.csv")
    big = np.add.outer(np.arange(7000) % 251, np.arange(7000) % 13).astype(np.uint8)
    first = w.root / "big.png"
    Image.fromarray(big).save(first, compress_level=1)  # 49 MP: about 0.4 s per worker
    for k in range(16):
        w.add_image(f"DUPONT_Big/IPP9{k}/big{k}.png", lambda p: os.link(first, p))
    first.unlink()
    os.replace(w.root / "labels.csv", w.root / "big.csv")
    os.replace(w.root / "small.csv", w.root / "labels.csv")
    watch = [*inputs(w), w.root / "big.csv"]
    return Case(import_argv(w), 0, r"imported 12 images", "ok", watch, runner=_killed_import)


@case("an import cleans a dead writer's leftover")
def _(w):
    w.export()
    leftover = w.root / ".out.partial-abc123"
    leftover.mkdir()
    (leftover / ".uslearn-partial").write_text(
        json.dumps({"pid": _dead_pid(), "host": os.uname()[1]})
    )
    (leftover / "images.u8").write_bytes(b"\0" * 100)
    return Case(import_argv(w), 0, r"imported 12 images", "ok", inputs(w))


@case("data check on a killed write's leftover")
def _(w):
    leftover = w.dataset(".out.partial-xyz")
    (leftover / ".uslearn-partial").write_text(json.dumps({"pid": _dead_pid(), "host": "h"}))
    argv = ["data", "check", str(leftover)]
    return Case(argv, 2, r"unfinished write", "error", [leftover])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
