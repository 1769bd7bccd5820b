"""B-mode image formation for the phantom, batched in torch.

The chain follows a real scanner, in polar (depth x scan line) coordinates of a convex probe:

1. tissue maps (echogenicity, attenuation, specular walls) from the anatomy slots;
2. scatterers: one complex reflectivity per resolution cell, random phase (a scatterer at a
   random sub-cell position) and amplitude from the echogenicity, with a log-normal factor
   where the tissue is heterogeneous (few strong scatterers -> non-Rayleigh speckle);
3. the point-spread function: a short axial pulse and a lateral beam that is narrow at the
   focus and widens above and below it (two lateral kernels blended by depth);
4. depth attenuation accumulated along each scan line (so fluid leaves posterior enhancement
   and bone/gas leave shadows), time-gain compensation tuned for average soft tissue,
   electronic noise, then the envelope;
5. log compression to the scanner's dynamic range and grey map;
6. scan conversion to the sector (black outside), the burned-in overlay, resizing, 8 bits.

Uses one torch thread when called by the generator, so results do not depend on threading.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from uslearn.phantom.anatomy import ORGANS, tissue_maps
from uslearn.phantom.exams import P
from uslearn.phantom.overlay import Layout, overlay

# Beyond this loss (dB) relative to average tissue a region counts as shadowed, i.e. unseen.
SHADOW_DB = 20.0
# The anatomy grid (depth x lines) on which labels are measured, whatever the image size.
LABEL_GRID = (64, 48)
_DB = float(np.log(10.0) / 20.0)  # amplitude = exp(dB * _DB)
_AXIAL = 0.8  # axial PSF sigma (polar samples)
_LATERAL = (0.9, 1.8)  # lateral PSF sigma at the focus and far from it (scan lines)


def internal_size(size: int) -> int:
    """Return the side of the internal frame: small outputs are drawn at 2x and averaged down."""
    return max(size, min(2 * size, 128))


@dataclass
class Rendered:
    """A rendered batch.

    Attributes:
        images: (B, size, size) uint8 frames.
        visible: (B, len(ORGANS)) visible, unshadowed fraction of the sector each organ covers.
        masks: (B, len(ORGANS), size, size) bool organ masks, only when asked for.
    """

    images: np.ndarray
    visible: np.ndarray
    masks: np.ndarray | None = None


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """Return the (n, n) matrix of a Gaussian blur along an axis of n samples (zero outside).

    Blurs are matrix products: on a CPU one GEMM beats a 1-channel convolution by ~10x.
    """
    t = torch.arange(n, dtype=torch.float32)
    k = torch.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    k[k < 1e-4] = 0.0
    return k / (sigma * np.sqrt(2 * np.pi))


@functools.lru_cache(maxsize=8)
def _lateral_matrix(n: int) -> torch.Tensor:
    """Return the (n, 2n) narrow | wide lateral blur matrices side by side."""
    return torch.cat([_blur_matrix(n, _LATERAL[0]), _blur_matrix(n, _LATERAL[1])], 1)


def _mean3x3(x: torch.Tensor) -> torch.Tensor:
    """Return the 3x3 local mean of (B, H, W) images, edges averaged over what exists."""
    pad = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _polar_grid(p: torch.Tensor, rows: int, cols: int):
    """Return x, z, depth (B, rows, cols) in cm of a polar grid's cell centres."""
    radius, depth, half = p[:, P["radius"]], p[:, P["depth"]], p[:, P["half_angle"]]
    fr = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    ft = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols * 2 - 1
    d = depth[:, None, None] * fr[None, :, None]  # (B, rows, 1)
    theta = half[:, None, None] * ft[None, None, :]  # (B, 1, cols)
    r = radius[:, None, None] + d
    x = r * torch.sin(theta)
    z = r * torch.cos(theta) - radius[:, None, None]
    return x, z, d.expand_as(x).contiguous()


def _frame_grid(p: torch.Tensor, size: int) -> torch.Tensor:
    """Return the (B, size, size, 2) grid_sample coordinates of each frame pixel in the polar image."""
    radius, depth, half = (p[:, P[k], None, None] for k in ("radius", "depth", "half_angle"))
    fan_w, fan_h, top, xc = (p[:, P[k], None, None] for k in ("fan_w", "fan_h", "top", "xc"))
    z_top = radius * (torch.cos(half) - 1)
    frame_h = (depth - z_top) / fan_h
    frame_w = 2 * (radius + depth) * torch.sin(half) / fan_w
    f = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    x = (f[None, None, :] - xc) * frame_w * p[:, P["mirror"], None, None]
    z = z_top - top * frame_h + f[None, :, None] * frame_h
    r = torch.sqrt(x * x + (z + radius) ** 2)
    theta = torch.atan2(x, z + radius)
    return torch.stack([theta / half, 2 * (r - radius) / depth - 1], dim=-1)


def _frame_pixels(p: np.ndarray, size: int, x: float, z: float) -> tuple[int, int]:
    """Return the (row, col) pixel of display point (x, z) cm (x as displayed, after mirroring)."""
    radius, depth, half = p[P["radius"]], p[P["depth"]], p[P["half_angle"]]
    z_top = radius * (np.cos(half) - 1)
    frame_h = (depth - z_top) / p[P["fan_h"]]
    frame_w = 2 * (radius + depth) * np.sin(half) / p[P["fan_w"]]
    col = (x / frame_w + p[P["xc"]]) * size
    row = (z - z_top + p[P["top"]] * frame_h) / frame_h * size
    return int(np.floor(row)), int(np.floor(col))


def frame_overlay(p: np.ndarray, size: int, layout: Layout, lines: list[str]) -> np.ndarray:
    """Return the (size, size) overlay of one frame: text, depth ruler at 1 cm, focus marker."""
    radius, depth, half = p[P["radius"]], p[P["depth"]], p[P["half_angle"]]
    edge_x = (radius + depth) * np.sin(half)
    side = -1.0 if layout.ruler_left else 1.0
    _, col = _frame_pixels(p, size, side * edge_x, 0.0)
    col += int(side * max(2, size // 64))
    rows = np.array([_frame_pixels(p, size, 0.0, cm)[0] for cm in range(int(depth) + 1)])
    focus_row, _ = _frame_pixels(p, size, 0.0, p[P["focus"]])
    # The orientation dot marks the probe's notch side, which mirroring moves across.
    notch = -radius * np.sin(half) * p[P["mirror"]]
    top = _frame_pixels(p, size, notch, radius * (np.cos(half) - 1))
    return overlay(size, layout, lines, col, rows, focus_row, top)


def _anatomy(p: torch.Tensor, slots: np.ndarray, rows: int, cols: int, coarse: torch.Tensor):
    """Return tissue maps, radial depth and accumulated two-way loss (dB) on a polar grid."""
    x, z, d = _polar_grid(p, rows, cols)
    depth = p[:, P["depth"]]
    texture = F.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)[:, 0]
    layers = p[:, [P["skin"], P["fat"], P["muscle"], P["fat_echo"]]]
    # Soft edges about 1.5 cells wide along both grid axes (lateral cells are wider at depth),
    # so thin walls are sampled smoothly instead of as beads.
    lateral_cell = (p[:, P["radius"]] + 0.5 * depth) * 2 * p[:, P["half_angle"]] / cols
    cell = 1.5 * torch.maximum(depth / rows, lateral_cell)
    maps = tissue_maps(x, z, d, slots, layers, cell, texture)
    # Attenuation accumulated along each scan line (two-way), at the cell centres.
    loss = 2 * p[:, P["freq"], None, None] * maps.att * (depth / rows)[:, None, None]
    return maps, d, torch.cumsum(loss, dim=1) - 0.5 * loss


def _visible(p: torch.Tensor, maps, d: torch.Tensor, loss_db: torch.Tensor) -> torch.Tensor:
    """Return (B, len(ORGANS)) the share of the sector each organ covers where it is not shadowed.

    That is what an annotator can see: area in the sector (area element ~ r dr dθ), minus the
    parts lost in shadows (more than SHADOW_DB below what average tissue would give).
    """
    nominal_db = 2 * p[:, P["freq"], None, None] * 0.5 * d
    lit = ((loss_db - nominal_db) < SHADOW_DB).float()
    area = d + p[:, P["radius"], None, None]
    return (maps.organs * (lit * area)[:, None]).sum((2, 3)) / area.sum((1, 2))[:, None]


def render(
    slots: np.ndarray,
    params: np.ndarray,
    overlays: list[tuple[Layout, list[str]]],
    size: int,
    generator: torch.Generator,
    with_masks: bool = False,
) -> Rendered:
    """Return B-mode frames of a batch of scenes.

    Args:
        slots: (B, K, F) anatomy slots (``anatomy``).
        params: (B, len(PARAMS)) settings.
        overlays: per frame, the vendor layout and the settings text lines.
        size: output side (pixels).
        generator: torch generator for the speckle and the texture fields.
        with_masks: also return the organ masks (for tests and galleries).
    """
    p = torch.as_tensor(params, dtype=torch.float32)
    used = int((slots[..., 0] >= 0).sum(axis=1).max(initial=1))  # slots are packed first
    slots = slots[:, :used]
    batch = p.shape[0]
    side = internal_size(size)
    n_r, n_t = side, int(round(0.75 * side))
    a_r, a_t = max(n_r // 2, LABEL_GRID[0]), max(n_t // 2, LABEL_GRID[1])
    coarse = torch.randn(batch, 1, 7, 6, generator=generator)
    maps, d, loss_db = _anatomy(p, slots, a_r, a_t, coarse)
    # Labels are measured on one fixed grid, so they do not depend on the image size.
    if (a_r, a_t) == LABEL_GRID:
        visible = _visible(p, maps, d, loss_db)
    else:
        visible = _visible(p, *_anatomy(p, slots, *LABEL_GRID, coarse))
    depth = p[:, P["depth"]]
    freq = p[:, P["freq"], None, None]
    rel = d / depth[:, None, None]
    tgc = 2 * freq * (0.5 + p[:, P["tgc_err"], None, None]) * d
    tgc = tgc + p[:, P["tgc_mid"], None, None] * torch.sin(np.pi * rel)
    tgc = tgc + p[:, P["tgc_deep"], None, None] * rel
    focus_rel = (p[:, P["focus"], None, None] - d) / (0.25 * depth[:, None, None])
    theta_rel = torch.linspace(-1, 1, a_t)[None, None, :]
    net_db = tgc - loss_db + 2.0 * torch.exp(-(focus_rel**2)) - 4.0 * theta_rel**8

    # The receive gain (TGC minus attenuation) varies slowly along a line, so it is applied to
    # the scatterer amplitudes on the coarse grid, before the PSF: one less full-size pass.
    gain = torch.exp(net_db * _DB)
    amp = torch.exp(maps.echo_db * (p[:, P["contrast"], None, None] * _DB))
    haze = p[:, P["haze"], None, None] * torch.exp(-d / 1.2)
    sigma = 0.8 * maps.tex
    # Log-normal amplitude factor of heterogeneous tissue, mean-corrected (exp(-sigma^2 / 2)).
    amp = torch.sqrt(amp * amp + haze * haze) * torch.exp(-0.5 * sigma * sigma) * gain
    lumps = sigma * torch.randn(batch, a_r, a_t, generator=generator)
    coarse_maps = torch.stack([amp, 1.5 * maps.wall * gain, lumps], 1)
    fine = F.interpolate(coarse_maps, size=(n_r, n_t), mode="bilinear", align_corners=False)
    amp, wall, lumps = fine.unbind(1)

    # Scatterers: complex Gaussian reflectivity per cell (random sub-cell positions), scaled by
    # the echo level; heterogeneous tissue gets a log-normal factor (clusters of scatterers).
    noise = torch.randn(batch, 2, n_r, n_t, generator=generator)
    field = noise * (amp * torch.exp(lumps))[:, None]
    field[:, 0] += wall  # specular reflectors add coherently
    # PSF: axial pulse, then a lateral beam narrow at the focus and wide away from it.
    field = torch.matmul(_blur_matrix(n_r, _AXIAL), field)
    both = torch.matmul(field, _lateral_matrix(n_t))  # (B, 2, n_r, 2 n_t)
    fr = (torch.arange(n_r, dtype=torch.float32) + 0.5) / n_r
    defocus = (fr[None, :] * depth[:, None] - p[:, P["focus"], None]).abs()
    blend = (defocus / (0.35 * depth[:, None]) * (3.5 / p[:, P["freq"], None])).clamp(0, 1)
    field = torch.lerp(both[..., :n_t], both[..., n_t:], blend[:, None, :, None])

    noise_amp = torch.pow(10.0, p[:, P["noise_db"], None, None] / 20.0)
    # Electronic noise is white: the speckle draws, mirrored in depth, serve as its samples
    # (where the noise shows, the echo it was drawn for lies elsewhere and is unrelated).
    thermal = noise.flip(2)
    re = torch.addcmul(field[:, 0], thermal[:, 1], noise_amp)
    im = torch.addcmul(field[:, 1], thermal[:, 0], noise_amp)
    level = 10.0 * torch.log10(re * re + im * im + 1e-12)
    low = (p[:, P["gain"]] - p[:, P["dyn_range"]])[:, None, None]
    shown = ((level - low) / p[:, P["dyn_range"], None, None]).clamp_(0, 1)
    # Speckle reduction filter of modern scanners: blend with a 3x3 local mean.
    shown = torch.lerp(shown, _mean3x3(shown), p[:, P["smooth"], None, None])
    shown = shown ** p[:, P["gamma"], None, None]

    grid = _frame_grid(p, side)
    frames = F.grid_sample(
        shown[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0]
    marks = np.stack([frame_overlay(params[i], side, *overlays[i]) for i in range(batch)])
    frames = torch.maximum(frames, torch.as_tensor(marks))
    if side != size:
        frames = F.interpolate(frames[:, None], size=(size, size), mode="area")[:, 0]
    # Truncation of non-negative values after +0.5 rounds to nearest.
    images = (frames * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).numpy()
    masks = None
    if with_masks:
        organ_maps = F.interpolate(maps.organs, size=(n_r, n_t), mode="bilinear")
        organ_maps = torch.stack(
            [
                F.grid_sample(organ_maps[:, c : c + 1], grid, align_corners=False)[:, 0]
                for c in range(len(ORGANS))
            ],
            1,
        )
        if side != size:
            organ_maps = F.interpolate(organ_maps, size=(size, size), mode="area")
        masks = (organ_maps > 0.5).numpy()
    return Rendered(images=images, visible=visible.numpy().astype(np.float32), masks=masks)
