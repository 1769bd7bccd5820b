"""Burned-in annotations of a PACS freeze frame: settings text, depth ruler, focus marker.

Real exported frames carry the scanner's overlay in the pixels: probe and preset name,
frequency, depth, gain, frame rate and safety indices in a corner, a depth scale with a tick
per centimetre beside the sector, a small marker at the focal depth, often a grey-scale bar.
They are part of what a model sees, so the phantom draws them with a tiny bitmap font.
Nothing here encodes the organ shown (the depth does, a little, as on real frames).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# 3x5 bitmap font: five rows of three pixels per character ("#" = lit).
_FONT_ROWS = {
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "### ..# ### #.. ###",
    "3": "### ..# ### ..# ###",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###",
    "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###",
    "A": ".#. #.# ### #.# #.#",
    "B": "##. #.# ##. #.# ##.",
    "C": "### #.. #.. #.. ###",
    "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..",
    "G": "### #.. #.# #.# ###",
    "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###",
    "K": "#.# ##. #.. ##. #.#",
    "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#",
    "N": "##. #.# #.# #.# #.#",
    "O": "### #.# #.# #.# ###",
    "P": "### #.# ### #.. #..",
    "R": "##. #.# ##. #.# #.#",
    "S": "### #.. ### ..# ###",
    "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.",
    "X": "#.# #.# .#. #.# #.#",
    "Z": "### ..# .#. #.. ###",
    ".": "... ... ... ... .#.",
    "-": "... ... ### ... ...",
    ":": "... .#. ... .#. ...",
    "/": "..# ..# .#. #.. #..",
    " ": "... ... ... ... ...",
}
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], dtype=np.float32)
    for ch, rows in _FONT_ROWS.items()
}


@dataclass(frozen=True)
class Layout:
    """A vendor's overlay style (shared by all frames of that vendor).

    Attributes:
        text_right: settings text in the top-right corner instead of the top-left.
        ruler_left: depth ruler on the left of the sector instead of the right.
        brightness: grey level of the overlay (0..1).
        grey_bar: draw the grey-scale bar in the side margin.
        logo: draw the probe-orientation dot beside the top of the sector.
    """

    text_right: bool
    ruler_left: bool
    brightness: float
    grey_bar: bool
    logo: bool


@functools.lru_cache(maxsize=4096)
def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """Return the (5 scale, 4 scale len(text)) bitmap of ``text`` (cached: lines repeat)."""
    glyphs = []
    for ch in text.upper():
        glyphs += [FONT.get(ch, FONT[" "]), np.zeros((5, 1), dtype=np.float32)]
    bitmap = np.concatenate(glyphs, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=np.float32)) if scale > 1 else bitmap


def draw_text(canvas: np.ndarray, text: str, row: int, col: int, value: float, scale: int = 1):
    """Draw ``text`` into ``canvas`` (in place) with its top-left corner at (row, col)."""
    bitmap = text_bitmap(text, scale)
    height, width = canvas.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + bitmap.shape[0], height), min(col + bitmap.shape[1], width)
    if r1 > r0 and c1 > c0:
        patch = bitmap[r0 - row : r1 - row, c0 - col : c1 - col] * value
        np.maximum(canvas[r0:r1, c0:c1], patch, out=canvas[r0:r1, c0:c1])


def overlay(
    size: int,
    layout: Layout,
    lines: list[str],
    ruler_col: int,
    ruler_rows: np.ndarray,
    focus_row: int,
    fan_top: tuple[int, int],
) -> np.ndarray:
    """Return a (size, size) float32 overlay in [0, 1] (0 = nothing drawn).

    Args:
        size: side of the frame (pixels).
        layout: the vendor's style.
        lines: settings text, one string per line.
        ruler_col: column of the depth ruler.
        ruler_rows: rows of the centimetre ticks (every fifth is long).
        focus_row: row of the focal depth.
        fan_top: (row, col) of the top-left corner of the sector, for the orientation dot.
    """
    canvas = np.zeros((size, size), dtype=np.float32)
    scale = max(1, size // 160)
    value = layout.brightness
    line_h = 7 * scale
    for i, text in enumerate(lines):
        width = len(text) * 4 * scale
        col = size - width - 2 if layout.text_right else 2
        draw_text(canvas, text, 2 + i * line_h, col, value, scale)
    step = -1 if layout.ruler_left else 1
    rows = np.asarray(ruler_rows)
    for offset in range(3 * scale):
        # Every centimetre a dot, every fifth a dash.
        tick = rows if offset < scale else rows[::5]
        col = ruler_col + step * offset
        tick = tick[(tick >= 0) & (tick < size)]
        if 0 <= col < size:
            canvas[tick, col] = value
    if 0 <= focus_row < size:
        for d in range(3 * scale):
            col = ruler_col + step * (3 * scale + 1 + d)
            rows = np.arange(focus_row - (3 * scale - d) // 2, focus_row + (3 * scale - d) // 2 + 1)
            rows = rows[(rows >= 0) & (rows < size)]
            if 0 <= col < size:
                canvas[rows, col] = value
    if layout.grey_bar:
        top, bottom = size // 4, (3 * size) // 4
        col = size - 4 * scale if not layout.ruler_left else 1
        ramp = np.linspace(1.0, 0.05, bottom - top, dtype=np.float32)[:, None]
        canvas[top:bottom, col : col + 2 * scale] = ramp
    if layout.logo:
        row, col = fan_top
        r0, c0 = max(row, 0), max(col - 3 * scale, 0)
        canvas[r0 : r0 + 2 * scale, c0 : c0 + 2 * scale] = value
    return canvas
