"""Batched augmentations for grayscale ultrasound, with per-image random parameters, on the device.

Every function takes a whole batch, uint8 ``(B, H, W)`` or float ``(B, 1, H, W)`` in [0, 1], and
returns float32 ``(B, 1, S, S)`` in [0, 1] on the input's device. Randomness comes only from the
``generator`` (a ``torch.Generator`` on that device), so a seeded generator replays the same
views. The geometric part of a view (crop, flip, translate, rotate, shear and the resize to S) is
one ``affine_grid`` + ``grid_sample`` sampling straight from the stored image; the intensity
ops are vectorised with per-image magnitudes. No per-image Python loop anywhere: a pipeline of
PIL images cannot feed a GPU at > 10 000 img/s (docs/GPU.md).

Pixels sampled from outside the image are 0, the black background of a B-mode frame. Images are
assumed square (the dataset contract stores them so); the views are S × S.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

# PICA views (Sec. 2.2.1): random resized crop, flip, brightness/contrast/gamma, blur or speckle.
CROP_SCALE = (0.2, 1.0)  # area fraction of the crop
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratio w/h, log-uniform
BRIGHTNESS, CONTRAST, GAMMA = 0.3, 0.3, (0.7, 1.4)  # factors 1 ± 0.3, gamma log-uniform
BLUR_P, BLUR_SIGMA = 0.5, (0.1, 2.0)  # blur with probability 0.5, else speckle noise
SPECKLE_SIGMA = 0.2
# PICA's other view (the official code's "reduced transform" of the original images): resize
# to 40 then a random 32 px crop on CIFAR, i.e. a random crop of 80 % of the side, no flip and
# no photometric change.
REDUCED_SIDE = 0.8
PICA_FIRST_VIEWS = ("reduced", "full")
# FixMatch weak view: flip + translation up to 12.5 % of the side (the reference's 4 px of 32).
WEAK_TRANSLATE = 0.125
# FixMatch strong view: RandAugment ranges at magnitude 10 (FixMatch's RandAugmentMC pool).
STRONG_ROTATE_DEG, STRONG_SHEAR, STRONG_TRANSLATE, STRONG_ENHANCE = 30.0, 0.3, 0.3, 0.9
STRONG_OPS = (
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "posterize",
)
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
CUTOUT, CUTOUT_FILL = 0.5, 0.5  # square side as a fraction of S (16 px of 32 in FixMatch), gray


def _as_float(x: Tensor) -> Tensor:
    """Return x as float32 (B, 1, H, W) in [0, 1] from uint8 (B, H, W) or float (B, 1, H, W)."""
    if x.dtype == torch.uint8:
        if x.dim() != 3:
            raise ValueError(f"uint8 input must be (B, H, W), got {tuple(x.shape)}")
        return x.unsqueeze(1).float().div_(255.0)
    if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(
            f"expected uint8 (B, H, W) or float (B, 1, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    return x.float()


def _uniform(b: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """Return (B,) samples of U(low, high) on the generator's device."""
    return torch.rand(b, generator=generator, device=generator.device) * (high - low) + low


def _sign(b: int, generator: torch.Generator) -> Tensor:
    """Return (B,) random ±1."""
    return torch.randint(0, 2, (b,), generator=generator, device=generator.device) * 2.0 - 1.0


def _affine_grid(theta: Tensor, size: int) -> Tensor:
    """Return ``F.affine_grid(theta, (B, 1, S, S), align_corners=False)``: (B, S, S, 2).

    Written as two broadcast multiply-adds instead of torch's batched matmul with an inner
    dimension of 3 (15 % faster on a busy 2-core CPU, 208 × 224²).
    """
    coords = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    xs, ys = coords.view(1, 1, size), coords.view(1, size, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]  # (B, S, S)
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack((gx, gy), dim=-1)


def _sample(x: Tensor, theta: Tensor, size: int) -> Tensor:
    """Return x: (B, 1, H, W) resampled at S = size through sampling matrices theta: (B, 2, 3)."""
    grid = _affine_grid(theta, size)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _identity(b: int, device: torch.device) -> Tensor:
    return torch.eye(3, device=device).expand(b, 3, 3).clone()  # (B, 3, 3)


def _index_subsets(device: torch.device) -> bool:
    """Return True where an op should run on the chosen images only (CPU), False on accelerators.

    On CPU, computing an op for the chosen subset saves work and indexing costs nothing. On a
    GPU, ``nonzero`` would block the host until every queued kernel (the previous step's backward
    included) has finished, so there the op runs on the whole batch and ``torch.where`` keeps it.
    """
    return device.type == "cpu"


def _masked(view: Tensor, chosen: Tensor, fn) -> Tensor:
    """Return view with fn(rows) written where chosen: (B,) is True; fn maps a row selector."""
    if _index_subsets(view.device):
        rows = chosen.nonzero().squeeze(1)
        if rows.numel() == 0:
            return view
        view = view.clone()
        view[rows] = fn(rows)
        return view
    return torch.where(chosen.view(-1, 1, 1, 1), fn(slice(None)), view)


def to_input(x: Tensor, size: int) -> Tensor:
    """Return the evaluation input: x resized to (B, 1, size, size) float32 in [0, 1], no randomness."""
    x = _as_float(x)
    if x.shape[-2:] != (size, size):
        # Antialiased, since evaluation often shrinks large stored frames.
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.clamp_(0.0, 1.0)


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Return x: (B, 1, S, S) blurred with a per-image Gaussian of std sigma: (B,) pixels."""
    b, _, h, w = x.shape
    radius = math.ceil(3 * BLUR_SIGMA[1])
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (k,)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # One group per image: the batch becomes the channel axis of a single grouped convolution.
    planes = F.pad(x.view(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(b, 1, -1, 1), groups=b)  # vertical pass
    planes = F.conv2d(planes, kernel.view(b, 1, 1, -1), groups=b)  # horizontal pass
    return planes.view(b, 1, h, w)


def pica_views(
    x: Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    first_view: str = "reduced",
) -> tuple[Tensor, Tensor]:
    """Return the two PICA views (x̃, x̂) of a batch, each (B, 1, size, size) float32 in [0, 1].

    The paper applies two different schemes ·̃ and ·̂ (Sec. 2.2, Fig. 2). View ·̂ is the full
    perturbation: random resized crop (area fraction ``scale``, aspect 3/4-4/3), horizontal
    flip, gamma / contrast / brightness jitter, then Gaussian blur (p = 0.5) or speckle noise
    x·(1 + σ n), σ ~ U(0, 0.2). View ·̃ is ``reduced_view`` (``first_view="reduced"``, the
    official PICA code's choice) or a second independent draw of the full perturbation
    (``first_view="full"``).
    """
    if first_view not in PICA_FIRST_VIEWS:
        raise ValueError(f"first_view must be one of {PICA_FIRST_VIEWS}, got {first_view!r}")
    x = _as_float(x)
    if first_view == "reduced":
        first = reduced_view(x, size, generator)
    else:
        first = _pica_view(x, size, generator, scale)
    return first, _pica_view(x, size, generator, scale)


def reduced_view(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Return the reduced PICA view: a random crop of ``REDUCED_SIDE`` of the side, resized.

    The official PICA code's transform of the "original" images (resize, then a random crop
    to the network size): a random translation only, no flip and no change of intensity.

    Returns:
        (B, 1, size, size) float32 in [0, 1].
    """
    x = _as_float(x)
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = REDUCED_SIDE
    # Crop centre, in normalised coordinates, anywhere the crop stays inside the image.
    theta[:, :, 2] = (1.0 - REDUCED_SIDE) * (
        torch.rand(b, 2, generator=generator, device=generator.device) * 2 - 1
    )
    return _sample(x, theta, size).clamp_(0.0, 1.0)


def _pica_view(x: Tensor, size: int, generator: torch.Generator, scale) -> Tensor:
    b = x.shape[0]
    area = _uniform(b, scale[0], scale[1], generator)
    log_ratio = _uniform(b, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator)
    # Crop width/height as fractions of the side, capped at the whole image.
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = _uniform(b, -1.0, 1.0, generator) * (1.0 - w)  # centre in normalised coordinates
    cy = _uniform(b, -1.0, 1.0, generator) * (1.0 - h)
    flip = _sign(b, generator)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    view = _sample(x, theta, size)  # (B, 1, S, S)

    gamma = torch.exp(_uniform(b, math.log(GAMMA[0]), math.log(GAMMA[1]), generator))
    contrast = _uniform(b, 1.0 - CONTRAST, 1.0 + CONTRAST, generator)
    brightness = _uniform(b, 1.0 - BRIGHTNESS, 1.0 + BRIGHTNESS, generator)
    view = view.clamp(min=0.0).pow(gamma.view(b, 1, 1, 1))
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = (mean + contrast.view(b, 1, 1, 1) * (view - mean)) * brightness.view(b, 1, 1, 1)
    view = view.clamp(0.0, 1.0)

    use_blur = torch.rand(b, generator=generator, device=generator.device) < BLUR_P
    sigma = _uniform(b, BLUR_SIGMA[0], BLUR_SIGMA[1], generator)
    speckle = _uniform(b, 0.0, SPECKLE_SIGMA, generator).view(b, 1, 1, 1)
    noise = torch.randn(view.shape, generator=generator, device=generator.device)
    noisy = view * (1.0 + speckle * noise)
    view = _masked(noisy, use_blur, lambda rows: _gaussian_blur(view[rows], sigma[rows]))
    return view.clamp_(0.0, 1.0)


def weak_view(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Return the FixMatch weak view: flip (p = 0.5) and translation up to 12.5 % of the side.

    Returns:
        (B, 1, size, size) float32 in [0, 1].
    """
    x = _as_float(x)
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = _sign(b, generator)
    theta[:, 1, 1] = 1.0
    # Normalised coordinates span 2 per side, hence the factor 2.
    theta[:, :, 2] = (
        2
        * WEAK_TRANSLATE
        * (torch.rand(b, 2, generator=generator, device=generator.device) * 2 - 1)
    )
    return _sample(x, theta, size).clamp_(0.0, 1.0)


def _geometric(op: str, m: Tensor, sign: Tensor) -> Tensor:
    """Return (B, 3, 3) sampling matrices of a geometric op with magnitudes m: (B,) in [0, 1]."""
    mat = _identity(m.shape[0], m.device)
    v = m * sign
    if op == "rotate":
        angle = torch.deg2rad(v * STRONG_ROTATE_DEG)
        mat[:, 0, 0], mat[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        mat[:, 1, 0], mat[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    elif op == "shear_x":
        mat[:, 0, 1] = v * STRONG_SHEAR
    elif op == "shear_y":
        mat[:, 1, 0] = v * STRONG_SHEAR
    elif op == "translate_x":
        mat[:, 0, 2] = 2 * v * STRONG_TRANSLATE
    elif op == "translate_y":
        mat[:, 1, 2] = 2 * v * STRONG_TRANSLATE
    return mat


def _intensity(op: str, x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return op applied to x: (B, 1, S, S) with magnitudes m: (B,) in [0, 1] and signs ±1."""
    m4 = m.view(-1, 1, 1, 1)
    factor = (1.0 + sign * m * STRONG_ENHANCE).view(-1, 1, 1, 1)  # PIL ImageEnhance factor
    if op == "autocontrast":
        # Own version of TF.autocontrast: its boolean-mask assignment can synchronise a GPU.
        low = x.amin(dim=(2, 3), keepdim=True)
        span = x.amax(dim=(2, 3), keepdim=True) - low
        flat = span == 0
        return ((x - torch.where(flat, 0.0, low)) / torch.where(flat, 1.0, span)).clamp(0.0, 1.0)
    if op == "equalize":
        return TF.equalize(x)
    if op == "solarize":
        return torch.where(x >= 1.0 - m4, 1.0 - x, x)
    if op == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + factor * (x - mean)).clamp(0.0, 1.0)
    if op == "brightness":
        return (x * factor).clamp(0.0, 1.0)
    if op == "sharpness":
        return _sharpness(x, factor)
    if op == "posterize":
        # Keep 8 down to 4 bits: quantisation step 2^(8 − bits) grey levels.
        step = torch.exp2(torch.round(4.0 * m4))
        return torch.floor(x * 255.0 / step) * step / 255.0
    raise ValueError(f"unknown op {op!r}")


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's sharpness: blend with the 3×3 smoothed image (border pixels kept), per-image factor."""
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (9 · box3 + 4 · centre) / 13,
    # computed with avg_pool2d rather than a 1-channel convolution (slow on CPU).
    smooth = x.clone()
    box = F.avg_pool2d(x, kernel_size=3, stride=1)
    smooth[:, :, 1:-1, 1:-1] = (9.0 * box + 4.0 * x[:, :, 1:-1, 1:-1]) / 13.0
    return (smooth + factor * (x - smooth)).clamp(0.0, 1.0)


def _cutout(x: Tensor, generator: torch.Generator, fraction: float) -> Tensor:
    """Return x with one gray square of side fraction·S per image, centred anywhere (clipped)."""
    b, _, h, w = x.shape
    # Scaled by python numbers: a host tensor [h, w] sent to the GPU would synchronise.
    centre = torch.rand(b, 2, 1, 1, generator=generator, device=generator.device)
    half = fraction * min(h, w) / 2.0
    rows = torch.arange(h, device=x.device).view(1, h, 1) + 0.5
    cols = torch.arange(w, device=x.device).view(1, 1, w) + 0.5
    inside = ((rows - h * centre[:, 0]).abs() < half) & ((cols - w * centre[:, 1]).abs() < half)
    return x.masked_fill(inside.unsqueeze(1), CUTOUT_FILL)


def strong_view(
    x: Tensor,
    size: int,
    generator: torch.Generator,
    n_ops: int = 2,
    magnitude: float = 10,
    cutout: float = CUTOUT,
) -> Tensor:
    """Return the FixMatch strong view: weak view + RandAugment (no colour ops) + cutout.

    Per image, ``n_ops`` ops are drawn uniformly from ``STRONG_OPS``, each applied with
    probability 1/2 at a magnitude drawn uniformly from [0, magnitude/10] of its range and a
    random direction (FixMatch's RandAugmentMC). The weak view's flip/translation and every drawn
    geometric op (rotate ±30°, shear ±0.3, translate ±30 %) are composed into one sampling
    matrix; the intensity ops follow in their drawn order. Finally one gray square of side
    ``cutout``·S is cut out (FixMatch: 16 px of 32).

    Returns:
        (B, 1, size, size) float32 in [0, 1].
    """
    if not 0 <= magnitude <= 10 or n_ops < 0 or not 0 <= cutout <= 1:
        raise ValueError("need 0 <= magnitude <= 10, n_ops >= 0, 0 <= cutout <= 1")
    x = _as_float(x)
    b, device = x.shape[0], x.device
    # Random numbers are drawn in a fixed order and amount, so the stream never depends on data.
    flip = _sign(b, generator)
    shift = 2 * WEAK_TRANSLATE * (torch.rand(b, 2, generator=generator, device=device) * 2 - 1)
    ops = torch.randint(0, len(STRONG_OPS), (n_ops, b), generator=generator, device=device)
    applied = torch.rand(n_ops, b, generator=generator, device=device) < 0.5
    mags = torch.rand(n_ops, b, generator=generator, device=device) * (magnitude / 10.0)
    signs = torch.randint(0, 2, (n_ops, b), generator=generator, device=device) * 2.0 - 1.0

    theta = _identity(b, device)
    theta[:, 0, 0], theta[:, :2, 2] = flip, shift
    for slot in range(n_ops):
        for op in GEOMETRIC_OPS:
            chosen = (ops[slot] == STRONG_OPS.index(op)) & applied[slot]  # (B,)
            mat = _geometric(op, mags[slot], signs[slot])
            theta = theta @ torch.where(chosen.view(b, 1, 1), mat, _identity(b, device))
    view = _sample(x, theta[:, :2], size).clamp_(0.0, 1.0)

    for slot in range(n_ops):
        current = view
        for op in STRONG_OPS:
            if op in GEOMETRIC_OPS:
                continue
            chosen = (ops[slot] == STRONG_OPS.index(op)) & applied[slot]  # (B,)
            view = _masked(
                view,
                chosen,
                lambda rows, op=op, slot=slot, current=current: _intensity(
                    op, current[rows], mags[slot][rows], signs[slot][rows]
                ),
            )
    return _cutout(view, generator, cutout)
