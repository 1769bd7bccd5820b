"""Decode → grayscale → crop → colour-Doppler test → letterbox resize, shared by both importers.

The resize rule is **letterbox**: the image (or its ultrasound region) is scaled so that its
longer side becomes ``size`` pixels, keeping the aspect ratio, and centred on a black square.
Nothing of the field of view is cut (an organ at the edge of a sector stays visible) and
anatomy is not stretched; the padding is black like the background around a sector.
Downscaling is antialiased (PIL's bilinear filter widens its support with the scale factor).
"""

from __future__ import annotations

import functools
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Source frames outside these bounds are rejected ("too_small", "too_large") before decoding.
# Ultrasound frames are 0.3-2 megapixels; 50 MP (e.g. 7 000 x 7 000) is no frame but a
# decompression bomb, whose decoded pixels would not fit a worker's memory. Below 16 pixels a
# side (the smallest store size) there is no image to learn from: icons, 1 x 1 placeholders.
MIN_SIDE, MAX_PIXELS = 16, 50_000_000
# Depths that sensors produce; 16-bit data without a declared depth is read as the smallest
# that holds its maximum.
SENSOR_BITS = (8, 10, 12, 14, 16)
Box = tuple[int, int, int, int]  # (top, bottom, left, right), bottom/right exclusive


class ImageRejected(Exception):
    """An item that cannot or should not be imported; ``reason`` is a short key for the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Preprocess:
    """How a decoded frame becomes a stored image.

    Attributes:
        size: side of the stored square image in pixels.
        crop: "auto" crops to the largest non-background region (DICOM: to the ultrasound
            region when the file declares one); "none" keeps the whole frame.
        doppler_fraction: a colour frame whose region has more than this fraction of
            coloured pixels is rejected as colour Doppler; 1.0 keeps every frame.
        doppler_chroma: a pixel is coloured when max(R,G,B) - min(R,G,B) exceeds this. Grey
            B-mode has 0; the saturated reds/blues of Doppler are > 100, while tinted grey
            maps (sepia) and JPEG colour noise stay well below 64.
    """

    size: int = 224
    crop: str = "auto"
    doppler_fraction: float = 0.01
    doppler_chroma: int = 64


def check_dimensions(width: int, height: int) -> None:
    """Raise ImageRejected "too_large" above MAX_PIXELS pixels (a decompression bomb)."""
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            "too_large",
            f"{width} x {height} pixels is over the limit of {MAX_PIXELS:,} (a decompression "
            "bomb or not an ultrasound frame); not decoded",
        )


def read_image_file(path: str | Path) -> np.ndarray:
    """Return the decoded image at ``path`` as (H, W) or (H, W, 3) uint8 (first frame of a TIFF).

    16-bit grayscale is scaled by its significant bits (``significant_bits``): the PNG sBIT
    chunk when present, else the smallest sensor depth holding the data's maximum.

    Raises:
        ImageRejected: "missing" if there is no file, "too_large" above MAX_PIXELS (checked
            from the header, before decoding), "unreadable" if it does not decode completely
            (corrupt or truncated). Details hold no path.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("missing", "no such file")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP and raises from 179 MP; both are bombs here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_dimensions(*image.size)
                image.load()  # decode fully now, so a truncated file fails here
                declared = png_significant_bits(path) if image.format == "PNG" else None
                # An EXIF orientation (phones, some exporters) is applied, as every viewer does.
                return _pil_to_array(ImageOps.exif_transpose(image), declared)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("too_large", f"{err} Not decoded.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        detail = str(err).replace(str(path), "<file>")
        raise ImageRejected("unreadable", f"{type(err).__name__}: {detail}") from err


def png_significant_bits(path: str | Path) -> int | None:
    """Return the significant bits of a PNG's gray (or first colour) channel from its sBIT chunk.

    Returns None without a valid sBIT before the image data. PIL does not read the chunk.
    """
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(64):  # sBIT precedes IDAT; a few ancillary chunks at most
            head = handle.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = handle.read(min(length, 4))
                return data[0] if data and 1 <= data[0] <= 16 else None
            if kind in (b"IDAT", b"IEND"):
                return None
            handle.seek(length + 4, 1)  # data and CRC
    return None


def significant_bits(array: np.ndarray, declared: int | None = None) -> int:
    """Return the bits per sample of unsigned integer data: ``declared`` if given, else the
    smallest of SENSOR_BITS that holds the maximum (12-bit data in a 16-bit file gives 12)."""
    if declared:
        return int(declared)
    peak = int(array.max()) if array.size else 0
    return next((b for b in SENSOR_BITS if peak < (1 << b)), 8 * array.dtype.itemsize)


def _pil_to_array(image: Image.Image, declared_bits: int | None = None) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I" and declared_bits:
        array = np.asarray(image)
        if array.dtype.kind == "i":  # mode "I" holds 16-bit samples in int32
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return to_uint8(array, significant_bits(array, declared_bits))
    if mode in ("I", "F"):
        return to_uint8(np.asarray(image))
    if mode in ("1", "L", "LA"):
        return np.asarray(image.convert("L"))
    if mode == "P" and image.palette is not None and image.palette.mode == "L":
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def to_uint8(array: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Return ``array`` as uint8: 8-bit input unchanged, deeper integers scaled down by bit depth.

    Args:
        array: integer or float pixel array.
        bits: significant bits per sample (DICOM BitsStored); None infers it from the dtype
            for 16-bit data and from the maximum for wider or float data.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" or bits is None and array.dtype.itemsize > 2:
        array = np.nan_to_num(array.astype(np.float64))
        lo, hi = float(array.min()), float(array.max())
        if lo >= 0 and hi <= 255:
            return np.rint(array).astype(np.uint8)
        scaled = (array - lo) * (255.0 / max(hi - lo, 1e-12))
        return np.rint(scaled).astype(np.uint8)
    bits = bits or 8 * array.dtype.itemsize
    if array.dtype.kind == "i":  # signed samples: shift into 0..2^bits-1
        array = array.astype(np.int64) + (1 << (bits - 1))
    shift = max(bits - 8, 0)
    return np.clip(array.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def to_gray(array: np.ndarray) -> np.ndarray:
    """Return a (H, W) uint8 luma image (ITU-R BT.601 weights) of a gray or RGB(A) uint8 array."""
    if array.ndim == 2:
        return array
    # PIL's "L" conversion is the BT.601 luma in fixed point, 5x faster than numpy here.
    return np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :3])).convert("L"))


def colour_fraction(array: np.ndarray, chroma: int) -> float:
    """Return the fraction of pixels in coloured areas: channel spread max - min > ``chroma``.

    Thin coloured strokes (calipers, focus marks, text one or two pixels wide) are removed by
    a 3 x 3 opening first, so only filled areas such as a Doppler colour box count. 0 for gray.
    """
    if array.ndim == 2:
        return 0.0
    r, g, b = array[..., 0], array[..., 1], array[..., 2]
    # Element-wise over channel planes: a reduction over a last axis of length 3 is 10x slower.
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    coloured = spread > chroma
    if not coloured.any():  # gray frames: skip the opening
        return 0.0
    coloured = ndimage.binary_opening(coloured, structure=np.ones((3, 3)))
    return float(coloured.mean())


def auto_region(gray: np.ndarray, threshold: int = 12) -> Box:
    """Return the bounding box of the largest non-background region of a frame.

    Pixels brighter than ``threshold`` are foreground; on a coarse grid (about 128 cells on
    the shorter side) one-cell gaps are closed and holes filled, so dark fluid inside the
    sector (the bladder, the gallbladder) stays part of it. Burned-in text, rulers and logos
    more than two cells away are separate, smaller components and fall outside the box. A frame with no region covering 5 % of it
    (blank or very dark) keeps its full extent.
    """
    h, w = gray.shape
    f = max(1, min(h, w) // 128)
    hh, ww = h // f * f, w // f * f
    # Block maximum as f*f strided views combined element-wise (much faster than a reduction
    # over small inner axes).
    views = (gray[i:hh:f, j:ww:f] for i in range(f) for j in range(f))
    coarse = functools.reduce(np.maximum, views) > threshold
    coarse = ndimage.binary_closing(coarse, structure=np.ones((3, 3)))
    coarse = ndimage.binary_fill_holes(coarse)
    labels, n = ndimage.label(coarse)
    if n == 0:
        return 0, h, 0, w
    areas = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(areas)) + 1
    if areas[biggest - 1] < 0.05 * coarse.size:
        return 0, h, 0, w
    rows, cols = ndimage.find_objects(labels)[biggest - 1]
    return rows.start * f, min(rows.stop * f, h), cols.start * f, min(cols.stop * f, w)


def letterbox(gray: np.ndarray, size: int) -> np.ndarray:
    """Return ``gray`` scaled to fit a ``size`` x ``size`` square (aspect kept), centred on black."""
    h, w = gray.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(np.ascontiguousarray(gray)).resize(
        (nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0
    )
    out = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(resized)
    return out


def prepare(array: np.ndarray, options: Preprocess, box: Box | None = None) -> np.ndarray:
    """Return the stored (size, size) uint8 image of a decoded uint8 frame.

    Args:
        array: (H, W) or (H, W, 3) uint8 frame.
        options: the preprocessing settings.
        box: ultrasound region to crop to (e.g. from DICOM's Sequence of Ultrasound Regions);
            None uses ``options.crop``.

    Raises:
        ImageRejected: "doppler" for a colour-Doppler frame, "too_small" for a frame under
            MIN_SIDE pixels a side, "unreadable" for one that is not 2-D.
    """
    if array.ndim not in (2, 3):
        raise ImageRejected("unreadable", f"frame of shape {array.shape}")
    if min(array.shape[:2]) < MIN_SIDE:
        height, width = array.shape[:2]
        raise ImageRejected(
            "too_small",
            f"{width} x {height} pixels; a frame needs at least {MIN_SIDE} pixels a side",
        )
    gray = to_gray(array)
    if box is None and options.crop == "auto":
        box = auto_region(gray)
    if box is not None:
        top, bottom, left, right = box
        if min(bottom, gray.shape[0]) - top > 1 and min(right, gray.shape[1]) - left > 1:
            array, gray = array[top:bottom, left:right], gray[top:bottom, left:right]
    if options.doppler_fraction < 1:
        coloured = colour_fraction(array, options.doppler_chroma)
        if coloured > options.doppler_fraction:
            raise ImageRejected("doppler", f"{coloured:.1%} coloured pixels in the image region")
    return letterbox(gray, options.size)
