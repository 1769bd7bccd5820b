"""Bad inputs and faults through the public command line (``python -m uslearn``).

Every case builds its inputs in a folder of its own, hashes every input and every earlier
dataset, runs the command line and checks:

- the exit code (2 bad input, 1 a fault of the machine or a failed check, 0 handled);
- that the output names the problem (a pattern) and holds no traceback;
- that nothing hashed changed (inputs, earlier datasets, an earlier run's checkpoint, best.pt
  and metrics.json), that no ``.partial-*``, ``.tmp-<pid>`` or lock file is left, and that no
  file the command wrote holds a patient name or raw ID of the export (``DUPONT``, ``IPP9...``).

Data cases copy a small PNG export, its dataset and DICOM files; training cases use the tiny
phantom at 32 px, one step per epoch, and a finished two-step run of it, made once per session.

Outcomes: ``error`` (refused with one line), ``skipped`` (bad items skipped under --skip-bad
and reported), ``ok`` (handled correctly, e.g. 12-bit PNGs scaled by their real depth).
The cases run three at a time: each is a process, mostly waiting on Python's start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

SALT = "corpus-salt"
SECRETS = (b"DUPONT", b"IPP9")  # folder names and raw patient IDs of the export
CASES: dict[str, Callable[[World], Case]] = {}
SLOW: set[str] = set()  # cases that import torch or wait on processes: started first


@dataclass
class Case:
    """One command line run and what it must give."""

    argv: list[str]
    code: int
    message: str  # regular expression searched in stdout + stderr
    outcome: str  # "error", "skipped" or "ok"
    watch: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. ["unshare", "--user"]
    file_size_limit: int | None = None  # RLIMIT_FSIZE in bytes (SIGXFSZ ignored: EFBIG)
    check: Callable[[str], None] | None = None  # more assertions, given the output
    runner: Callable[[Case, World], tuple[int, str]] | None = None  # for multi-process cases


def case(name: str, slow: bool = False):
    def register(build: Callable[[World], Case]) -> Callable[[World], Case]:
        CASES[name] = build
        if slow:
            SLOW.add(name)
        return build

    return register


# ---------------------------------------------------------------------------------- inputs


def frame(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    image = np.zeros((h, w), np.uint8)
    image[4:-4, 4:-4] = np.random.default_rng(seed).integers(30, 220, (h - 8, w - 8))
    return image


def png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a PNG whose header claims width x height (pixel data is a stub): a bomb to refuse."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# One short run of every training case: the tiny phantom at 32 px, one step per epoch.
RUN_CONFIG = {
    "strategy": "lsd",
    "image_size": 32,
    "batch_exams": 64,
    "max_images_per_exam": 4,
    "device": "cpu",
    "epochs": 2,
}
RUN_FLAGS = [
    "--strategy",
    "lsd",
    "--size",
    "32",
    "--batch-exams",
    "64",
    "--max-images-per-exam",
    "4",
    "--device",
    "cpu",
    "--epochs",
    "2",
]


def make_base(base: Path) -> None:
    """Write the inputs every case copies: a PNG export, its CSV, a dataset, DICOM files, the
    tiny phantom and a finished training run on it (``run``: 2 steps, checkpoint kept)."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from uslearn.data.images import Preprocess
    from uslearn.data.importers import ImportSettings, import_folder

    rows = []
    for p in range(4):
        for i in range(3):
            rel = f"DUPONT_Jean_{p}/IPP90000{p}/img{i}.png"
            (base / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame(10 * p + i)).save(base / "in" / rel)
            labels = ["liver", "kidney", "spleen"][i] if p < 3 else ""
            rows.append(
                {"path": rel, "patient_id": f"IPP90000{p}", "exam_id": "1", "labels": labels}
            )
    pd.DataFrame(rows).to_csv(base / "labels.csv", index=False)
    settings = ImportSettings(preprocess=Preprocess(size=32), splits={"val": 1, "test": 1})
    import_folder(base / "in", base / "labels.csv", base / "ds", SALT, settings)
    (base / "ds.rejected.csv").unlink()
    for k in range(3):
        ds = DicomDataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
        ds.PatientID, ds.PatientName = f"IPP90010{k}", "DUPONT^Jean"
        ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.set_pixel_data(frame(100 + k), "MONOCHROME2", 8)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        (base / "dicom").mkdir(exist_ok=True)
        ds.save_as(base / "dicom" / f"IM{k}", enforce_file_format=True)
    from uslearn.phantom import generate_phantom
    from uslearn.strategies import run

    generate_phantom(base / "tiny", preset="tiny", seed=0)
    run(RUN_CONFIG, base / "tiny", out_dir=base / "run")


class World:
    """The folder of one case, with copies of the shared inputs on demand."""

    def __init__(self, base: Path, root: Path):
        self.base, self.root = base, root

    def copy(self, name: str, as_name: str | None = None) -> Path:
        target = self.root / (as_name or name)
        source = self.base / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target

    def export(self) -> tuple[Path, Path]:
        return self.copy("in"), self.copy("labels.csv")

    def add_image(self, rel: str, write: Callable[[Path], object], labels: str = "liver") -> Path:
        """Add a file to the export and list it in the CSV (a new patient)."""
        path = self.root / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        table = pd.read_csv(self.root / "labels.csv", keep_default_na=False)
        row = {"path": rel, "patient_id": f"IPP9{len(table):05d}", "exam_id": "1", "labels": labels}
        pd.concat([table, pd.DataFrame([row])]).to_csv(self.root / "labels.csv", index=False)
        return path

    def dataset(self, name: str = "ds") -> Path:
        return self.copy("ds", name)

    def tiny(self, name: str = "tiny") -> Path:
        return self.copy("tiny", name)

    def run(self, name: str = "run") -> Path:
        """Return a copy of the finished run (hard links: the code replaces files, never
        edits them; a case that damages a file unlinks it first, see ``replace_file``)."""
        target = self.root / name
        shutil.copytree(self.base / "run", target, copy_function=os.link)
        return target


def replace_file(path: Path, data: bytes) -> None:
    """Give ``path`` new content without touching the file it was linked to."""
    path.unlink()
    path.write_bytes(data)


def import_argv(w: World, *extra: str, out: str | Path | None = None) -> list[str]:
    out = w.root / "out" if out is None else out
    return [
        "data",
        "import",
        "--images",
        str(w.root / "in"),
        "--labels",
        str(w.root / "labels.csv"),
        "--out",
        str(out),
        "--size",
        "32",
        "--salt",
        SALT,
        "--workers",
        "1",
        *extra,
    ]


def inputs(w: World) -> list[Path]:
    return [w.root / "in", w.root / "labels.csv"]


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
    return Case(argv, 2, r"--rejected .*labels.csv.*inside the input", "error", inputs(w))


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
    return Case(argv, 2, r"exists and is not a PNG", "error", [*inputs(w), ds])


def _two_imports(c: Case, w: World) -> tuple[int, str]:
    procs = [_popen(c.argv, c, w) for _ in range(2)]
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


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _killed_import(c: Case, w: World) -> tuple[int, str]:
    """Kill an import of the big export once its workers run; then import the small one."""
    labels = c.argv.index("--labels") + 1
    first = [*c.argv[:labels], str(w.root / "big.csv"), *c.argv[labels + 1 : -2], "--workers", "2"]
    proc = _popen(first, c, w)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid)
        if len(workers) >= 3 and list(w.root.glob(".out.partial-*")):  # fork server + 2
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the import ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 60
    while time.monotonic() < end and any(_running(p) for p in workers):
        time.sleep(0.1)
    assert not any(_running(p) for p in workers), "workers outlived the killed import"
    (partial,) = w.root.glob(".out.partial-*")
    check = subprocess.run(
        [sys.executable, "-m", "uslearn", "data", "check", str(partial)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert check.returncode == 2 and "unfinished write" in check.stderr, check.stderr
    again = _popen(c.argv, c, w)
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


# --------------------------------------------------------------------------- images


@case("a 15000 x 15000 PNG (decompression bomb)")
def _(w):
    w.export()
    w.add_image("DUPONT_Bomb/IPP9/bomb.png", lambda p: png_header_only(p, 15000, 15000))
    return Case(import_argv(w), 2, r"bomb.png: too_large: .*decompression bomb", "error", inputs(w))


@case("a 15000 x 15000 PNG with --skip-bad")
def _(w):
    w.export()
    w.add_image("DUPONT_Bomb/IPP9/bomb.png", lambda p: png_header_only(p, 15000, 15000))

    def listed(output):
        rejected = pd.read_csv(w.root / "out.rejected.csv")
        assert rejected["reason"].tolist() == ["too_large"]

    argv = import_argv(w, "--skip-bad")
    return Case(
        argv, 0, r"skipped DUPONT_Bomb/IPP9/bomb.png: too_large", "skipped", inputs(w), check=listed
    )


@case("an 8000 x 8000 PNG (over the 50 MP limit, under PIL's)")
def _(w):
    w.export()
    w.add_image("DUPONT_Big/IPP9/big.png", lambda p: png_header_only(p, 8000, 8000))
    return Case(
        import_argv(w, "--skip-bad"),
        0,
        r"skipped .*big.png: too_large: 8000 x 8000",
        "skipped",
        inputs(w),
    )


@case("a 1 x 1 PNG")
def _(w):
    w.export()
    w.add_image("DUPONT_Tiny/IPP9/dot.png", lambda p: Image.new("L", (1, 1), 128).save(p))
    return Case(import_argv(w), 2, r"dot.png: too_small: 1 x 1 pixels", "error", inputs(w))


@case("a 1 x 1 PNG with --skip-bad")
def _(w):
    w.export()
    w.add_image("DUPONT_Tiny/IPP9/dot.png", lambda p: Image.new("L", (1, 1), 128).save(p))
    return Case(
        import_argv(w, "--skip-bad"), 0, r"skipped .*dot.png: too_small", "skipped", inputs(w)
    )


def _twelve_bit(path: Path, sbit: int | None = None) -> None:
    data = np.zeros((48, 64), np.uint16)
    data[4:-4, 4:-4] = np.linspace(0, 2990, 40 * 56).reshape(40, 56)  # 12-bit: max 2990 of 4095
    info = None
    if sbit:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(data).save(path, pnginfo=info)


def _stored_max_of_new_image(w: World, expected: int) -> Callable[[str], None]:
    def check(output):
        from uslearn.data.dataset import Dataset
        from uslearn.data.pseudonym import pseudonym

        ds = Dataset.open(w.root / "out")
        row = ds.manifest.index[
            ds.manifest["image_id"] == pseudonym("image", "DUPONT_Deep/IPP9/deep.png", SALT)
        ]
        assert abs(int(ds.images[row[0]].max()) - expected) <= 2, ds.images[row[0]].max()

    return check


@case("12-bit data in a 16-bit PNG (no sBIT)")
def _(w):
    w.export()
    w.add_image("DUPONT_Deep/IPP9/deep.png", _twelve_bit)
    check = _stored_max_of_new_image(w, 2990 >> 4)  # 186, not 2990 >> 8 = 11
    return Case(import_argv(w), 0, r"imported 13 images", "ok", inputs(w), check=check)


@case("12-bit data in a 16-bit PNG declaring sBIT 14")
def _(w):
    w.export()
    w.add_image("DUPONT_Deep/IPP9/deep.png", lambda p: _twelve_bit(p, sbit=14))
    check = _stored_max_of_new_image(w, 2990 >> 6)  # the declared depth wins over the range
    return Case(import_argv(w), 0, r"imported 13 images", "ok", inputs(w), check=check)


@case("a truncated PNG")
def _(w):
    w.export()
    png = w.root / "in" / "DUPONT_Jean_1" / "IPP900001" / "img0.png"
    png.write_bytes(png.read_bytes()[:200])
    return Case(import_argv(w), 2, r"img0.png: unreadable: .*--skip-bad", "error", inputs(w))


@case("a truncated PNG with --skip-bad")
def _(w):
    w.export()
    png = w.root / "in" / "DUPONT_Jean_1" / "IPP900001" / "img0.png"
    png.write_bytes(png.read_bytes()[:200])
    return Case(
        import_argv(w, "--skip-bad"), 0, r"skipped .*img0.png: unreadable", "skipped", inputs(w)
    )


@case("random bytes named .png")
def _(w):
    w.export()
    w.add_image("DUPONT_X/IPP9/noise.png", lambda p: p.write_bytes(os.urandom(500)))
    return Case(
        import_argv(w), 2, r"noise.png: unreadable: UnidentifiedImageError", "error", inputs(w)
    )


@case("a CSV row whose file is missing")
def _(w):
    w.export()
    (w.root / "in" / "DUPONT_Jean_2" / "IPP900002" / "img1.png").unlink()
    return Case(import_argv(w), 2, r"img1.png: missing: no such file", "error", inputs(w))


@case("a DICOM whose header claims 20000 x 20000 pixels, --skip-bad")
def _(w):
    import pydicom

    dicom = w.copy("dicom")
    ds = pydicom.dcmread(dicom / "IM0")
    ds.Rows = ds.Columns = 20000
    ds.save_as(dicom / "IM0")
    argv = ["data", "import-dicom", "--dicom", str(dicom), "--out", str(w.root / "out")]
    argv += ["--salt", SALT, "--size", "32", "--workers", "1", "--skip-bad"]
    return Case(argv, 0, r"skipped IM0: too_large: 20000 x 20000", "skipped", [dicom])


@case("a 1 x 1 DICOM")
def _(w):
    import pydicom

    dicom = w.copy("dicom")
    ds = pydicom.dcmread(dicom / "IM1")
    ds.set_pixel_data(np.full((1, 1), 9, np.uint8), "MONOCHROME2", 8)
    ds.save_as(dicom / "IM1")
    argv = ["data", "import-dicom", "--dicom", str(dicom), "--out", str(w.root / "out")]
    argv += ["--salt", SALT, "--size", "32", "--workers", "1"]
    return Case(argv, 2, r"IM1 \(frame 0\): too_small: 1 x 1 pixels", "error", [dicom])


# --------------------------------------------------------------- machine faults


def _unshare(*extra: str) -> list[str]:
    """Return an ``unshare`` prefix when user namespaces work here, else skip the case."""
    probe = subprocess.run(["unshare", "--user", *extra, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare {' '.join(extra)} is not available: {probe.stderr.decode().strip()}")
    return ["unshare", "--user", *extra]


@case("disk full during an import (a 16 KiB tmpfs)")
def _(w):
    w.export()
    prefix = _unshare("--map-root-user", "--mount")
    disk = w.root / "disk"
    disk.mkdir()
    argv = import_argv(w, out=disk / "ds")
    # The shell mounts the tmpfs in a private namespace, runs the import, lists what is left.
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "uslearn", *argv])
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {disk} && {command}; code=$?; "
        f'echo "left: [$(ls -A {disk})]"; exit $code'
    )
    return Case(
        ["sh", "-c", script],
        1,
        r"error: .*/disk/ds: no space left on device while writing.*nothing was written",
        "error",
        inputs(w),
        prefix=prefix,
        check=lambda output: _assert_in("left: []", output),
    )


def _assert_in(text: str, output: str) -> None:
    assert text in output, output


@case("a file size limit during an import (RLIMIT_FSIZE: EFBIG)")
def _(w):
    w.export()
    return Case(
        import_argv(w),
        1,
        r"error: .*out: file too large while .*nothing was written",
        "error",
        inputs(w),
        file_size_limit=4096,
        check=lambda _: _assert_in("[]", str(sorted(p.name for p in w.root.glob("*out*")))),
    )


@case("permission denied on the output folder")
def _(w):
    prefix = _unshare()
    w.export()
    (w.root / "locked").mkdir(mode=0o555)
    argv = import_argv(w, out=w.root / "locked" / "ds")
    return Case(argv, 1, r"error: .*locked.*: permission denied", "error", inputs(w), prefix=prefix)


@case("permission denied on an input image")
def _(w):
    prefix = _unshare()
    w.export()
    (w.root / "in" / "DUPONT_Jean_0" / "IPP900000" / "img2.png").chmod(0)
    argv = import_argv(w)
    return Case(
        argv, 2, r"img2.png: unreadable: PermissionError", "error", inputs(w), prefix=prefix
    )


# ---------------------------------------------------------------- broken datasets


def _broken(w: World, edit: Callable[[Path], None], *extra: str) -> tuple[list[str], Path]:
    ds = w.dataset()
    edit(ds)
    return ["data", "check", str(ds), *extra], ds


@case("data check: a truncated manifest.parquet")
def _(w):
    argv, ds = _broken(
        w,
        lambda d: (d / "manifest.parquet").write_bytes((d / "manifest.parquet").read_bytes()[:300]),
    )
    return Case(argv, 2, r"manifest.parquet: not a readable parquet file", "error", [ds])


@case("data check: meta.json is not JSON")
def _(w):
    argv, ds = _broken(w, lambda d: (d / "meta.json").write_text("{format: 1"))
    return Case(argv, 2, r"meta.json: not valid JSON", "error", [ds])


@case("data check: meta.json is a list")
def _(w):
    argv, ds = _broken(w, lambda d: (d / "meta.json").write_text("[1, 2]"))
    return Case(argv, 2, r"meta.json: expected a JSON object", "error", [ds])


@case("data check: a truncated images.u8")
def _(w):
    argv, ds = _broken(w, lambda d: os.truncate(d / "images.u8", 100))
    return Case(argv, 2, r"images.u8: 100 bytes, expected", "error", [ds])


def _flip_first_byte(ds: Path) -> None:
    with open(ds / "images.u8", "r+b") as handle:
        value = handle.read(1)[0]
        handle.seek(0)
        handle.write(bytes([value ^ 0xFF]))


@case("data check: a store byte changed (full verification)")
def _(w):
    argv, ds = _broken(w, _flip_first_byte)
    return Case(argv, 1, r"fingerprint .* differs .*changed after writing", "error", [ds])


@case("data check --verify sample: a store byte changed in a sampled block")
def _(w):
    argv, ds = _broken(w, _flip_first_byte, "--verify", "sample")
    return Case(argv, 1, r"sampled hash .* differs", "error", [ds])


@case("data check: a dataset of almost black frames (12-bit read as 16-bit)")
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.writer import DatasetWriter

    source = Dataset.open(w.base / "ds")
    with DatasetWriter(w.root / "dark", source.size, len(source), "test") as writer:
        writer.write(0, (np.asarray(source.images) // 20).astype(np.uint8))  # max 11 of 255
        writer.commit(source.manifest)
    argv = ["data", "check", str(w.root / "dark")]
    return Case(
        argv, 1, r"PROBLEM: 12 of 12 image\(s\) are almost black", "error", [w.root / "dark"]
    )


@case("data check: one flat frame is a note")
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.writer import DatasetWriter

    source = Dataset.open(w.base / "ds")
    images = np.array(source.images)
    images[0] = 128
    with DatasetWriter(w.root / "flat", source.size, len(source), "test") as writer:
        writer.write(0, images)
        writer.commit(source.manifest)
    argv = ["data", "check", str(w.root / "flat")]
    return Case(argv, 0, r"note: 1 of 12 image\(s\) are flat", "ok", [w.root / "flat"])


@case("data check on a folder that is no dataset")
def _(w):
    in_, _ = w.export()
    return Case(["data", "check", str(in_)], 2, r"manifest.parquet: missing", "error", [in_])


@case("data split on a missing dataset")
def _(w):
    return Case(
        ["data", "split", str(w.root / "nope")], 2, r"nope: no dataset directory here", "error"
    )


@case("data split --val nan")
def _(w):
    ds = w.dataset()
    argv = ["data", "split", str(ds), "--val", "nan"]
    return Case(argv, 2, r"--val: .*nan: expected a finite number", "error", [ds])


# --------------------------------------------------------------- arguments, salt


@case("a salt of one space")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index(SALT)] = " "
    return Case(argv, 2, r"--salt: the salt is only blanks", "error", inputs(w))


@case("USLEARN_SALT of blanks")
def _(w):
    w.export()
    argv = import_argv(w)
    i = argv.index("--salt")
    del argv[i : i + 2]
    return Case(
        argv,
        2,
        r"USLEARN_SALT: the salt is only blanks",
        "error",
        inputs(w),
        env={"USLEARN_SALT": "   "},
    )


@case("no salt")
def _(w):
    w.export()
    argv = import_argv(w)
    i = argv.index("--salt")
    del argv[i : i + 2]
    return Case(
        argv, 2, r"no salt for pseudonymising", "error", inputs(w), env={"USLEARN_SALT": ""}
    )


@case("--keep-paths (removed: source paths hold names)")
def _(w):
    w.export()
    return Case(import_argv(w, "--keep-paths"), 2, r"--keep-paths was removed", "error", inputs(w))


@case("--doppler-fraction nan")
def _(w):
    w.export()
    argv = import_argv(w, "--doppler-fraction", "nan")
    return Case(argv, 2, r"--doppler-fraction: .*expected a finite number", "error", inputs(w))


@case("--workers 0")
def _(w):
    w.export()
    return Case(
        import_argv(w, "--workers", "0"), 2, r"--workers 0: expected at least 1", "error", inputs(w)
    )


@case("--size 8")
def _(w):
    w.export()
    return Case(import_argv(w, "--size", "8"), 2, r"--size 8 is out of range", "error", inputs(w))


@case("--images that does not exist")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index("--images") + 1] = str(w.root / "nope")
    return Case(argv, 2, r"--images .*nope: not a folder", "error", inputs(w))


@case("--labels that does not exist")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index("--labels") + 1] = str(w.root / "nope.csv")
    return Case(argv, 2, r"nope.csv", "error", inputs(w))


@case("a labels CSV with an unknown organ")
def _(w):
    w.export()
    table = pd.read_csv(w.root / "labels.csv", keep_default_na=False)
    table.loc[4, "labels"] = "lung"
    table.to_csv(w.root / "labels.csv", index=False)
    return Case(import_argv(w), 2, r"labels.csv, line 6: .*lung", "error", inputs(w))


@case("a labels CSV that is not UTF-8")
def _(w):
    w.export()
    csv = w.root / "labels.csv"
    csv.write_bytes(csv.read_bytes().replace(b"liver", b"f\xf6ie", 1))
    return Case(import_argv(w), 2, r"line 2 is not UTF-8", "error", inputs(w))


@case("data locate with a malformed id")
def _(w):
    in_, _ = w.export()
    argv = ["data", "locate", "--images", str(in_), "--salt", SALT, "DUPONT_Jean"]
    return Case(argv, 2, r"'DUPONT_Jean' is not an image id", "error", [in_])


# ------------------------------------------------------- configs, numbers, report


def _train_argv(w: World, *extra: str) -> list[str]:
    ds = w.dataset()
    return ["train", "--data", str(ds), "--strategy", "lsd", "--out", str(w.root / "run"), *extra]


@case("train --config that does not exist")
def _(w):
    argv = _train_argv(w, "--config", str(w.root / "missing.yaml"))
    return Case(argv, 2, r"missing.yaml: no such config file", "error", [w.root / "ds"])


@case("train --config with bad YAML")
def _(w):
    (w.root / "bad.yaml").write_text("lr: 0.1\nlam: [1, 2\nseed: 3\n")
    argv = _train_argv(w, "--config", str(w.root / "bad.yaml"))
    return Case(
        argv,
        2,
        r"bad.yaml, line \d+: not valid YAML",
        "error",
        [w.root / "ds", w.root / "bad.yaml"],
    )


@case("train --lam nan")
def _(w):
    return Case(
        _train_argv(w, "--lam", "nan"),
        2,
        r"lam='nan': expected a finite number",
        "error",
        [w.root / "ds"],
    )


@case("report on a missing MLflow store")
def _(w):
    argv = ["report", "--study", "lambda_sensitivity"]
    env = {"USLEARN_RUNS": str(w.root / "runs"), "MLFLOW_TRACKING_URI": ""}
    check = lambda _: _assert_in("[]", str(list(w.root.iterdir())))  # noqa: E731
    return Case(
        argv,
        2,
        r"no MLflow store at .*mlflow.db.*nothing was created",
        "error",
        env=env,
        check=check,
    )


@case("report on an empty MLflow store file")
def _(w):
    (w.root / "empty.db").write_bytes(b"")
    argv = ["report", "--study", "x", "--tracking-uri", f"sqlite:///{w.root / 'empty.db'}"]
    return Case(argv, 2, r"no MLflow store at .*empty.db", "error", [w.root / "empty.db"])


# ------------------------------------------------------------------ training runs


def train_argv(w: World, *extra: str, data: Path | None = None, out: Path | None = None):
    """Return a ``uslearn train`` of the short run (RUN_FLAGS), later flags winning."""
    data = w.tiny() if data is None else data
    out = w.root / "run" if out is None else out
    return ["train", "--data", str(data), "--out", str(out), *RUN_FLAGS, *extra]


def _no_torch_advice(output: str) -> None:
    assert "weights_only" not in output, output


def refused_resume(w: World, *extra: str, message: str, damage=None, data=None, check=None):
    """Return a ``train --resume`` of a copy of the finished run (``damage``d first) that must
    be refused, the run and the dataset unchanged."""
    run = w.run()
    if damage is not None:
        damage(run / "checkpoint" / "checkpoint.pt")
    data = w.tiny() if data is None else data
    argv = train_argv(w, "--resume", *extra, data=data, out=run)
    return Case(argv, 2, message, "error", [data, run], check=check)


@case("train --resume with another --lam", slow=True)
def _(w):
    return refused_resume(
        w,
        "--lam",
        "5",
        message=r"cannot resume from .*checkpoint.pt: this run asks for lam=5.0 \(the "
        r"checkpoint's: 2.0\); only the length \(epochs\) may change",
    )


@case("train --resume with another --strategy", slow=True)
def _(w):
    message = r"this run asks for strategy='pica' \(the checkpoint's: 'lsd'\)"
    return refused_resume(w, "--strategy", "pica", message=message)


@case("train --resume with a length that ends before the checkpoint's step", slow=True)
def _(w):
    message = r"the checkpoint is at step 2 .*past the end of this run \(1 step"
    return refused_resume(w, "--epochs", "1", message=message)


@case("train --resume on a dataset re-split since (another fingerprint)", slow=True)
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.splits import assign_splits, write_splits

    tiny = w.tiny()
    dataset = Dataset.open(tiny)
    write_splits(dataset, assign_splits(dataset.manifest, seed=1))
    message = r"asks for dataset_fingerprint='\w+' \(the checkpoint's: '\w+'\)"
    return refused_resume(w, data=tiny, message=message)


@case("train --resume from a truncated checkpoint.pt", slow=True)
def _(w):
    return refused_resume(
        w,
        damage=lambda path: replace_file(path, path.read_bytes()[:1_000_000]),
        message=r"checkpoint/checkpoint.pt: truncated or corrupt torch file",
        check=_no_torch_advice,
    )


def _pickled_object(path: Path) -> None:
    import torch

    path.unlink()
    torch.save({"model": Path("/etc/passwd")}, path)


@case("train --resume from a checkpoint.pt holding a pickled object", slow=True)
def _(w):
    return refused_resume(
        w,
        damage=_pickled_object,
        message=r"checkpoint.pt: holds a Python object \(pathlib.*\).*can run code",
        check=_no_torch_advice,
    )


@case("train --resume from a checkpoint.pt of random bytes", slow=True)
def _(w):
    return refused_resume(
        w,
        damage=lambda path: replace_file(path, os.urandom(4096)),
        message=r"checkpoint.pt: not a torch file, or a corrupt one",
        check=_no_torch_advice,
    )


@case("train --resume from best.pt copied over checkpoint.pt", slow=True)
def _(w):
    return refused_resume(
        w,
        damage=lambda path: replace_file(path, (path.parents[1] / "best.pt").read_bytes()),
        message=r"checkpoint.pt: not a uslearn training checkpoint \(it has no \['optimizer'",
    )


@case("train --resume with a longer --epochs (allowed)", slow=True)
def _(w):
    run = w.run()

    def continued(output):
        config = json.loads((run / "config.json").read_text())
        history = json.loads((run / "history.json").read_text())
        assert config["epochs"] == 3 and [h["step"] for h in history] == [1, 2, 3], history
        assert "resumed from" in output, output

    return Case(
        train_argv(w, "--resume", "--epochs", "3", out=run),
        0,
        r"outputs in .*run",
        "ok",
        [w.root / "tiny"],
        check=continued,
    )


@case("disk full during training (a 1 MiB tmpfs)", slow=True)
def _(w):
    tiny = w.tiny()
    prefix = _unshare("--map-root-user", "--mount")
    disk = w.root / "disk"
    disk.mkdir()
    command = " ".join(
        f"'{a}'"
        for a in [sys.executable, "-m", "uslearn", *train_argv(w, data=tiny, out=disk / "run")]
    )
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {disk} && {command}; code=$?; "
        f'echo "files: [$(find {disk} -type f)]"; exit $code'
    )
    return Case(
        ["sh", "-c", script],
        1,
        r"error: .*/disk/run/checkpoint/best.pt: no space left on device while writing the "
        r"best weights \(nothing was written\)",
        "error",
        [tiny],
        prefix=prefix,
        check=lambda output: _assert_in("files: []", output),
    )


@case("a file size limit while resuming (EFBIG): the earlier run is kept", slow=True)
def _(w):
    run = w.run()
    return Case(
        train_argv(w, "--resume", "--epochs", "3", out=run),
        1,
        r"error: .*run/checkpoint/best.pt: file too large while writing the best weights "
        r"\(the previous best.pt is unchanged\)",
        "error",
        [w.root / "tiny", run],
        file_size_limit=20_000_000,
    )


@case("a file size limit during train --workers 2 (a rank's error is the one line)", slow=True)
def _(w):
    return Case(
        train_argv(w, "--workers", "2", "--epochs", "1"),
        1,
        r"error: .*run/checkpoint/best.pt: file too large while writing the best weights",
        "error",
        [w.root / "tiny"],
        file_size_limit=20_000_000,
    )


def _spawned_workers(pid: int) -> set[int]:
    found = set()
    for child in _descendants(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            pass
    return found


def _killed_training(c: Case, w: World) -> tuple[int, str]:
    """SIGKILL a ``train --workers 2`` once its workers run; then train into the same --out."""
    first = [a for a in c.argv if a != "--overwrite"]
    first += ["--workers", "2", "--epochs", "50", "--batch-exams", "4"]
    proc = _popen(first, c, w)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None and len(workers) < 2:
        workers = _spawned_workers(proc.pid)
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) == 2, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 60
    while time.monotonic() < end and any(_running(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _running(p)]
    for pid in survivors:  # started by this test: do not leave them training
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "workers outlived the killed run"
    again = _popen(c.argv, c, w)
    return again.wait(timeout=300), again.stdout.read()


@case("SIGKILL of train --workers 2, then --overwrite into the same --out", slow=True)
def _(w):
    tiny = w.tiny()
    argv = train_argv(w, "--overwrite", "--epochs", "1", data=tiny)
    return Case(argv, 0, r"outputs in .*run", "ok", [tiny], runner=_killed_training)


def _two_trainings(c: Case, w: World) -> tuple[int, str]:
    procs = [_popen(c.argv, c, w) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], f"exactly one run must win: {results}"
    return 2, "\n".join(text for code, text in results if code == 2)


@case("two trainings into the same new --out at once", slow=True)
def _(w):
    return Case(
        train_argv(w, "--epochs", "1"),
        2,
        r"another uslearn command \(pid \d+\) is writing it|holds an earlier run",
        "error",
        [w.root / "tiny"],
        runner=_two_trainings,
    )


@case("permission denied on train --out")
def _(w):
    prefix = _unshare()
    tiny = w.tiny()
    (w.root / "locked").mkdir(mode=0o555)
    argv = train_argv(w, data=tiny, out=w.root / "locked" / "run")
    return Case(argv, 1, r"error: .*locked.*: permission denied", "error", [tiny], prefix=prefix)


@case("train into an earlier run without --resume or --overwrite")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, out=run),
        2,
        r"--out .*run: holds an earlier run; --resume continues it, --overwrite replaces it",
        "error",
        [w.root / "tiny", run],
    )


@case("train --out a folder of other files")
def _(w):
    (w.root / "thesis").mkdir()
    (w.root / "thesis" / "config.json").write_text('{"mine": true}')
    return Case(
        train_argv(w, out=w.root / "thesis"),
        2,
        r"--out .*thesis: holds files that uslearn did not write",
        "error",
        [w.root / "tiny", w.root / "thesis"],
    )


@case("train --out a file")
def _(w):
    (w.root / "notes.txt").write_text("mine")
    return Case(
        train_argv(w, out=w.root / "notes.txt"),
        2,
        r"--out .*notes.txt: is a file",
        "error",
        [w.root / "tiny", w.root / "notes.txt"],
    )


@case("train --resume --overwrite")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, "--resume", "--overwrite", out=run),
        2,
        r"--resume continues the run in --out, --overwrite replaces it: give one",
        "error",
        [w.root / "tiny", run],
    )


@case("train --resume on a run whose checkpoint/ was deleted")
def _(w):
    run = w.run()
    shutil.rmtree(run / "checkpoint")
    return Case(
        train_argv(w, "--resume", out=run),
        2,
        r"--resume: .*run holds a run's outputs but no checkpoint/checkpoint.pt",
        "error",
        [w.root / "tiny", run],
    )


@case("train on a dataset whose images.u8 changed (the sampled check)")
def _(w):
    tiny = w.tiny()
    _flip_first_byte(tiny)
    return Case(
        train_argv(w, data=tiny),
        2,
        r"tiny: sampled hash .* differs from meta.json's",
        "error",
        [tiny],
    )


@case("train --verify-data full on a dataset whose images.u8 changed")
def _(w):
    tiny = w.tiny()
    _flip_first_byte(tiny)
    return Case(
        train_argv(w, "--verify-data", "full", data=tiny),
        2,
        r"tiny: fingerprint \(every byte\) \w+ differs",
        "error",
        [tiny],
    )


@case("train --verify-data maybe")
def _(w):
    return Case(
        train_argv(w, "--verify-data", "maybe"),
        2,
        r"--verify-data: invalid choice: 'maybe'",
        "error",
        [w.root / "tiny"],
    )


@case("train --lr inf")
def _(w):
    return Case(
        train_argv(w, "--lr", "inf"),
        2,
        r"lr='inf': expected a finite number",
        "error",
        [w.root / "tiny"],
    )


@case("train --epochs 2.5")
def _(w):
    return Case(
        train_argv(w, "--epochs", "2.5"),
        2,
        r"epochs='2.5': expected int",
        "error",
        [w.root / "tiny"],
    )


@case("train --workers 0")
def _(w):
    return Case(
        train_argv(w, "--workers", "0"), 2, r"workers=0: expected >= 1", "error", [w.root / "tiny"]
    )


@case("train --workers 2 --resume")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, "--workers", "2", "--resume", out=run),
        2,
        r"--workers > 1 runs without --mlflow and --resume",
        "error",
        [w.root / "tiny", run],
    )


@case("train --init a checkpoint that does not exist")
def _(w):
    return Case(
        train_argv(w, "--init", str(w.root / "lsd" / "best.pt")),
        2,
        r"--init .*lsd/best.pt: no such file or folder",
        "error",
        [w.root / "tiny"],
    )


@case("train --config with lam: .nan")
def _(w):
    (w.root / "c.yaml").write_text("lam: .nan\n")
    return Case(
        train_argv(w, "--config", str(w.root / "c.yaml")),
        2,
        r"lam=nan: expected a finite number",
        "error",
        [w.root / "tiny", w.root / "c.yaml"],
    )


@case("train --config with a key LSD does not read")
def _(w):
    (w.root / "c.yaml").write_text("tau: 0.9\n")
    return Case(
        train_argv(w, "--config", str(w.root / "c.yaml")),
        2,
        r"unknown key\(s\) \['tau'\]",
        "error",
        [w.root / "tiny", w.root / "c.yaml"],
    )


# ------------------------------------------------------------------------- studies


def study_argv(w: World, *extra: str) -> list[str]:
    """Return a ``uslearn study lambda_sensitivity`` that starts nothing before its checks."""
    mlflow = f"sqlite:///{w.root / 'mlflow.db'}"
    return ["study", "lambda_sensitivity", "--profile", "cpu-demo", "--mlflow", mlflow, *extra]


@case("study --set lam=-1 (the grid sweeps lam), --dry-run")
def _(w):
    return Case(
        study_argv(w, "--set", "lam=-1", "--dry-run"),
        2,
        r"--set lam=-1: study 'lambda_sensitivity' sweeps it over its grid \[0.5, 1.0, 2.0, "
        r"5.0, 10.0\], which wins over --set",
        "error",
        check=lambda output: _assert_not_in("shared config", output),
    )


def _assert_not_in(text: str, output: str) -> None:
    assert text not in output, output


@case("study --set alpha=2 (an arm sets alpha)")
def _(w):
    return Case(
        study_argv(w, "--set", "alpha=2"),
        2,
        r"--set alpha=2: .* sets it in its arm 'lsd' \(alpha=1.05\)",
        "error",
    )


@case("study --set seed=3")
def _(w):
    return Case(study_argv(w, "--set", "seed=3"), 2, r"--set seed=3: .*use --seeds N", "error")


@case("study --set lr=nan")
def _(w):
    return Case(
        study_argv(w, "--set", "lr=nan"), 2, r"--set lr=nan: expected a finite number", "error"
    )


@case("study --num-gpus-per-trial nan")
def _(w):
    return Case(
        study_argv(w, "--num-gpus-per-trial", "nan"),
        2,
        r"--num-gpus-per-trial: nan: expected a finite number",
        "error",
    )


@case("study --cpus-per-worker inf")
def _(w):
    return Case(
        study_argv(w, "--cpus-per-worker", "inf"),
        2,
        r"--cpus-per-worker: inf: expected a finite number",
        "error",
    )


@case("study --smoke-test on a dataset whose images.u8 changed: refused before Ray")
def _(w):
    tiny = w.tiny()
    _flip_first_byte(tiny)

    def nothing_started(output):
        started = "Started a local Ray instance" in output or (w.root / "mlflow.db").exists()
        assert not started, output

    return Case(
        study_argv(w, "--smoke-test", "--data", str(tiny), "--no-report"),
        2,
        r"tiny: sampled hash .* differs from meta.json's",
        "error",
        [tiny],
        check=nothing_started,
    )


@case("study --dry-run --set lr=0.01 prints it, never a swept value", slow=True)
def _(w):
    def shared_line(output):
        line = next(x for x in output.splitlines() if x.startswith("shared config:"))
        assert "lr=0.01" in line and "lam=" not in line and "alpha=" not in line, line

    return Case(
        study_argv(w, "--set", "lr=0.01", "--dry-run"),
        0,
        r"20 trials = 10 cells x 2 seeds",
        "ok",
        check=shared_line,
    )


# ---------------------------------------------------------------------- machinery


def _popen(argv: list[str], c: Case, w: World) -> subprocess.Popen:
    env = {**os.environ, "USLEARN_PROGRESS": "0", **c.env}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    command = argv if argv[0] == "sh" else [sys.executable, "-m", "uslearn", *argv]

    def limit() -> None:
        if c.file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (c.file_size_limit, c.file_size_limit))

    return subprocess.Popen(
        [*c.prefix, *command],
        cwd=c.cwd or w.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,
    )


def _fingerprint(paths: list[Path]) -> dict[str, str | None]:
    """Return {path: sha256 or None} of every file under the watched paths (hidden ones too)."""
    found: dict[str, str | None] = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not path.exists():
            found[str(path)] = None
        for file in files:
            try:
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
            except PermissionError:
                found[str(file)] = f"mode {file.stat().st_mode:o}"
    return found


@dataclass
class Result:
    case: Case
    code: int
    output: str
    before: dict
    after: dict
    written: dict[str, bytes]
    seconds: float


def _run(name: str, base: Path, root: Path) -> Result:
    started = time.monotonic()
    w = World(base, root)
    c = CASES[name](w)
    before = _fingerprint(c.watch)
    existing = {p for p in root.rglob("*")}
    if c.runner is not None:
        code, output = c.runner(c, w)
    else:
        proc = _popen(c.argv, c, w)
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0] + "\n(timed out)"
        code = proc.returncode
    for path in root.rglob("*"):  # let the hashing read what a case locked away
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    if c.check is not None and code == c.code:
        c.check(output)
    # Weight files are not scanned for names: 134 MB of floats hold any 4 bytes by chance.
    written = {
        str(p): b"" if p.suffix == ".pt" else p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p not in existing
    }
    seconds = time.monotonic() - started
    return Result(c, code, output, before, _fingerprint(c.watch), written, seconds)


@pytest.fixture(scope="module")
def corpus(request):
    """Run the selected cases, three at a time; return {name: Future of Result}."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_bad_input" and hasattr(item, "callspec")
    ]
    top = Path(tempfile.mkdtemp(prefix="uslearn-corpus-"))
    top.chmod(0o755)  # the permission cases run as an unprivileged user
    make_base(top / "base")
    pool = ThreadPoolExecutor(3)
    futures: dict[str, Future] = {}
    # The slow ones (torch's import, the killed import) first, so that the rest fill the gaps.
    slow = sorted(selected, key=lambda name: name not in SLOW)
    for k, name in enumerate(slow):
        root = top / f"case{k:02d}"
        root.mkdir(mode=0o777)
        root.chmod(0o777)
        futures[name] = pool.submit(_run, name, top / "base", root)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    for path in top.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(corpus, name):
    result: Result = corpus[name].result()
    c, output = result.case, result.output
    assert result.code == c.code, f"exit {result.code}, expected {c.code}:\n{output}"
    assert re.search(c.message, output), f"no /{c.message}/ in:\n{output}"
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) <= 1, f"expected one error line at most:\n{output}"
    assert result.after == result.before, "an input or an earlier dataset changed"
    pattern = r"\.partial-|\.lock$|\.old-|\.tmp-\d+$"
    leftovers = [p for p in result.written if re.search(pattern, p)]
    assert not leftovers, leftovers
    for path, data in result.written.items():
        for secret in SECRETS:
            assert secret not in data, f"{path} holds {secret!r}"


def test_corpus_counts_by_outcome(corpus, capsys):
    """The corpus holds at least 50 cases; print how many ran per outcome."""
    results = {name: future.result() for name, future in corpus.items()}
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result.case.outcome] = counts.get(result.case.outcome, 0) + 1
    slowest = sorted(results, key=lambda name: -results[name].seconds)[:5]
    with capsys.disabled():
        print(
            "\ncorpus cases by outcome:", ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        )
        print("slowest:", "; ".join(f"{n} {results[n].seconds:.1f} s" for n in slowest))
    assert len(CASES) >= 50
