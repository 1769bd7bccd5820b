"""The corpus machinery: a case, the world it runs in (a PNG export, its dataset, DICOM files,
the tiny phantom and a finished run), and how a case's command line is started."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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
    from uslearn.data.dataset import Dataset
    from uslearn.inference.package import write_package
    from uslearn.phantom import generate_phantom
    from uslearn.strategies import run

    generate_phantom(base / "tiny", preset="tiny", seed=0)
    run(RUN_CONFIG, base / "tiny", out_dir=base / "run")
    write_package(base / "run", Dataset.open(base / "tiny"))  # as 'uslearn train' leaves it


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


def train_argv(w: World, *extra: str, data: Path | None = None, out: Path | None = None):
    """Return a ``uslearn train`` of the short run (RUN_FLAGS), later flags winning."""
    data = w.tiny() if data is None else data
    out = w.root / "run" if out is None else out
    return ["train", "--data", str(data), "--out", str(out), *RUN_FLAGS, *extra]


def no_torch_advice(output: str) -> None:
    assert "weights_only" not in output, output


def popen(argv: list[str], c: Case, w: World) -> subprocess.Popen:
    env = {**os.environ, "USLEARN_PROGRESS": "0", **c.env}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
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


def descendants(pid: int) -> set[int]:
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


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def flip_first_byte(ds: Path) -> None:
    with open(ds / "images.u8", "r+b") as handle:
        value = handle.read(1)[0]
        handle.seek(0)
        handle.write(bytes([value ^ 0xFF]))


def assert_in(text: str, output: str) -> None:
    assert text in output, output


def unshare(*extra: str) -> list[str]:
    """Return an ``unshare`` prefix when user namespaces work here, else skip the case."""
    probe = subprocess.run(["unshare", "--user", *extra, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare {' '.join(extra)} is not available: {probe.stderr.decode().strip()}")
    return ["unshare", "--user", *extra]
