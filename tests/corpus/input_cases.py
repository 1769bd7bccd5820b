"""Inputs that were silently misread or answered with a message naming the wrong thing
(issue 21, defects 3 and 4)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from corpus.predict_cases import predict_argv
from corpus.world import (
    SALT,
    Case,
    World,
    case,
    frame,
    import_argv,
    inputs,
    popen,
    train_argv,
    unshare,
)


@case("labels CSV naming the labels column twice")
def _(w):
    w.export()
    lines = (w.root / "labels.csv").read_text().splitlines()
    (w.root / "labels.csv").write_text(
        "\n".join([lines[0] + ",labels", *(line + ",spleen" for line in lines[1:])]) + "\n"
    )
    return Case(
        import_argv(w),
        2,
        r"labels.csv, line 1: column\(s\) labels named more than once",
        "error",
        inputs(w),
    )


@case("labels CSV with a misspelt column (spilt)")
def _(w):
    w.export()
    lines = (w.root / "labels.csv").read_text().splitlines()
    (w.root / "labels.csv").write_text(
        "\n".join([lines[0] + ",spilt", *(line + ",test" for line in lines[1:])]) + "\n"
    )
    return Case(
        import_argv(w), 2, r"labels.csv, line 1: unknown column\(s\) 'spilt'", "error", inputs(w)
    )


@case("labels CSV with its header only")
def _(w):
    w.export()
    (w.root / "labels.csv").write_text("path,patient_id,exam_id,labels\n")
    return Case(
        import_argv(w),
        2,
        r"labels.csv: has a header but no rows; expected one row per image",
        "error",
        inputs(w),
    )


@case("a symbolic link inside --images pointing outside it")
def _(w):
    w.export()
    first = w.root / "in" / "DUPONT_Jean_0" / "IPP900000" / "img0.png"
    (w.root / "elsewhere.png").write_bytes(first.read_bytes())
    w.add_image(
        "DUPONT_Jean_9/IPP900009/link.png", lambda p: p.symlink_to(w.root / "elsewhere.png")
    )
    return Case(
        import_argv(w),
        2,
        r"link.png is a symbolic link leading outside the input folder, like a '\.\.' path",
        "error",
        [*inputs(w), w.root / "elsewhere.png"],
    )


def _no_init_advice(output: str) -> None:
    assert "init" not in output, output  # the --init message answered this before


@case("predict --model a package whose best.pt is missing", slow=True)
def _(w):
    run, tiny = w.run(), w.tiny()
    (run / "best.pt").unlink()
    return Case(
        predict_argv(w, "--data", str(tiny), model=run),
        2,
        r"model .*run: .*best.pt \(the model's weights\) is missing",
        "error",
        [run, tiny],
        check=_no_init_advice,
    )


@case("import-dicom --max-frames 2 dropping the labelled frame 1 of a 3-frame loop")
def _(w):
    (w.root / "dicom").mkdir()
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.2"
    ds.PatientID, ds.StudyInstanceUID = "IPP900200", generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(np.stack([frame(200 + k) for k in range(3)]), "MONOCHROME2", 8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(w.root / "dicom" / "CINE", enforce_file_format=True)
    (w.root / "dicom.csv").write_text("path,frame,labels\nCINE,1,liver\n")
    argv = ["data", "import-dicom", "--dicom", str(w.root / "dicom"), "--labels"]
    argv += [str(w.root / "dicom.csv"), "--out", str(w.root / "out"), "--size", "32"]
    argv += ["--salt", SALT, "--workers", "1", "--max-frames", "2"]
    return Case(
        argv,
        2,
        r"line 2: frame 1 was not sampled by --max-frames 2 \(kept frames 0, 2 of 3\)",
        "error",
        [w.root / "dicom", w.root / "dicom.csv"],
    )


@case("permission denied on the --mlflow sqlite folder")
def _(w):
    prefix = unshare()
    tiny = w.tiny()
    (w.root / "locked").mkdir(mode=0o555)
    argv = train_argv(w, "--mlflow", f"sqlite:///{w.root / 'locked' / 'mlflow.db'}", data=tiny)
    return Case(
        argv,
        1,
        r"error: MLflow tracking URI .*locked.* is not writable",
        "error",
        [tiny],
        prefix=prefix,
    )


def _truncated_under_training(c: Case, w: World) -> tuple[int, str]:
    """Truncate the store (as ``cp`` over it does) once the run has started stepping."""
    proc = popen(c.argv, c, w)
    store = w.root / "tiny" / "images.u8"
    deadline = time.monotonic() + 240
    seen = ""
    while time.monotonic() < deadline and proc.poll() is None and "step" not in seen:
        seen += proc.stdout.readline()
    assert proc.poll() is None, f"the run ended before the store could be truncated:\n{seen}"
    os.truncate(store, store.stat().st_size // 2)
    try:
        rest, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = proc.communicate()[0] + "\n(timed out)"
    return proc.returncode, seen + rest


@case("images.u8 truncated while train runs (cp over the store)", slow=True)
def _(w):
    tiny = w.tiny()
    argv = train_argv(w, "--epochs", "400", "--eval-every", "1", data=tiny)

    return Case(
        argv,
        1,
        r"error: .*tiny/images.u8: changed while this command read it \(its size went from",
        "error",
        [],
        runner=_truncated_under_training,
    )
