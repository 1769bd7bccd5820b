"""Bad images, and faults of the machine during an import (disk full, permissions, size limits)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from corpus.world import (
    SALT,
    Case,
    World,
    assert_in,
    case,
    import_argv,
    inputs,
    png_header_only,
    unshare,
)

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


@case("a legacy DICOM without the 128-byte preamble and file meta (read)")
def _(w):
    import pydicom

    dicom = w.copy("dicom")
    ds = pydicom.dcmread(dicom / "IM2")
    del ds.file_meta
    ds.preamble = None  # what a file written before DICOM Part 10 lacks, with its "DICM"
    ds.save_as(dicom / "IM2", implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (dicom / "IM2").read_bytes()[128:132] != b"DICM"
    argv = ["data", "import-dicom", "--dicom", str(dicom), "--out", str(w.root / "out")]
    argv += ["--salt", SALT, "--size", "32", "--workers", "1"]
    return Case(argv, 0, r"imported 3 images", "ok", [dicom])


# --------------------------------------------------------------- machine faults


@case("disk full during an import (a 16 KiB tmpfs)")
def _(w):
    w.export()
    prefix = unshare("--map-root-user", "--mount")
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
        check=lambda output: assert_in("left: []", output),
    )


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
        check=lambda _: assert_in("[]", str(sorted(p.name for p in w.root.glob("*out*")))),
    )


@case("permission denied on the output folder")
def _(w):
    prefix = unshare()
    w.export()
    (w.root / "locked").mkdir(mode=0o555)
    argv = import_argv(w, out=w.root / "locked" / "ds")
    return Case(argv, 1, r"error: .*locked.*: permission denied", "error", inputs(w), prefix=prefix)


@case("permission denied on an input image")
def _(w):
    prefix = unshare()
    w.export()
    (w.root / "in" / "DUPONT_Jean_0" / "IPP900000" / "img2.png").chmod(0)
    argv = import_argv(w)
    return Case(
        argv, 2, r"img2.png: unreadable: PermissionError", "error", inputs(w), prefix=prefix
    )
