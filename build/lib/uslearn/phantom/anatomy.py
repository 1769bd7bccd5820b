"""Tissues and organ shapes of the ultrasound phantom, evaluated on a polar (depth, angle) grid.

A scene is a short list of *slots*: soft shapes (rotated ellipses bent into crescents or
beans, tapered into pears, squared into bladders) each filled with one tissue. Slots are
painted in order, so a later slot covers an earlier one (a kidney over the liver, a vessel
inside the liver). The body wall (skin, subcutaneous fat, muscle) is a function of the radial
depth only and is painted last. Everything is batched torch so one call shapes a whole batch.

Tissue values are relative, in the spirit of echogenicity tables in sonography texts: liver
is the 0 dB reference, fluid is anechoic (-50 dB), renal sinus fat and pancreas are brighter
than liver, renal cortex darker, spleen slightly brighter. Attenuation is in dB/cm/MHz
(soft tissue ~0.5, fluid ~0, bone and gas so high that everything below them is shadowed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads on first render, so `uslearn --help` stays fast
    import torch

# Organ channels of the masks and of the visible-area vector: CLASSES without `other`.
ORGANS: tuple[str, ...] = ("liver", "gallbladder", "kidney", "pancreas", "spleen", "bladder")


@dataclass(frozen=True)
class Tissue:
    """Acoustic properties of one tissue.

    Attributes:
        echo_db: mean backscatter amplitude relative to liver (dB).
        att: attenuation coefficient (dB/cm/MHz, one way).
        wall: brightness of its boundary (specular capsule/wall), linear amplitude.
        tex: heterogeneity of the scatterer field (0 = homogeneous fine speckle).
        organ: the organ label it counts for, or None.
    """

    echo_db: float
    att: float
    wall: float
    tex: float
    organ: str | None = None


TISSUES: dict[str, Tissue] = {
    "mesentery": Tissue(-1.0, 0.7, 0.0, 0.6),
    "liver": Tissue(0.0, 0.5, 1.4, 0.12, "liver"),
    "gallbladder": Tissue(-50.0, 0.01, 1.0, 0.0, "gallbladder"),
    "kidney_cortex": Tissue(-5.0, 0.6, 1.2, 0.15, "kidney"),
    "kidney_sinus": Tissue(11.0, 0.7, 0.0, 0.5, "kidney"),
    "kidney_pyramid": Tissue(-15.0, 0.5, 0.0, 0.1, "kidney"),
    "pancreas": Tissue(7.0, 0.6, 0.3, 0.2, "pancreas"),
    "spleen": Tissue(2.5, 0.5, 1.3, 0.1, "spleen"),
    "bladder": Tissue(-50.0, 0.01, 1.0, 0.0, "bladder"),
    "vein": Tissue(-45.0, 0.05, 0.0, 0.0),
    "portal": Tissue(-45.0, 0.05, 1.6, 0.0),
    "aorta": Tissue(-42.0, 0.05, 1.6, 0.0),
    "bowel": Tissue(-4.0, 0.9, 1.5, 0.8),
    "fluid": Tissue(-48.0, 0.01, 0.4, 0.0),
    "gas": Tissue(16.0, 12.0, 3.0, 0.3),
    "bone": Tissue(14.0, 15.0, 3.0, 0.2),
    "stone": Tissue(16.0, 10.0, 2.0, 0.1),
    "muscle": Tissue(-9.0, 1.0, 0.5, 0.35),
    "pelvic_organ": Tissue(-3.0, 0.7, 0.5, 0.25),
    "perirenal_fat": Tissue(5.0, 0.7, 0.0, 0.5),
    "fat_liver": Tissue(6.0, 0.9, 1.0, 0.1, "liver"),
    "diaphragm": Tissue(9.0, 0.5, 2.0, 0.2),
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)
TISSUE_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUE_NAMES)}

# Per-tissue lookup tables (row = tissue id) used by the batched renderer.
_TABLE = np.array([[t.echo_db, t.att, t.wall, t.tex] for t in TISSUES.values()], dtype=np.float32)
_ORGAN_ONEHOT = np.zeros((len(TISSUES), len(ORGANS)), dtype=np.float32)
for _i, _t in enumerate(TISSUES.values()):
    if _t.organ is not None:
        _ORGAN_ONEHOT[_i, ORGANS.index(_t.organ)] = 1.0

# Slot layout: one row of SLOT_FIELDS floats per shape; tissue -1 marks an empty slot.
SLOT_FIELDS: tuple[str, ...] = (
    "tissue",
    "cx",
    "cz",
    "a",
    "b",
    "rot",
    "bend",
    "taper",
    "square",
    "echo",
)
MAX_SLOTS = 14


def slot(
    tissue: str,
    cx: float,
    cz: float,
    a: float,
    b: float,
    rot: float = 0.0,
    bend: float = 0.0,
    taper: float = 0.0,
    square: float = 0.0,
    echo: float = 0.0,
) -> tuple[float, ...]:
    """Return one slot row: ``tissue`` filling a shape centred at (cx, cz) cm.

    Args:
        tissue: a key of TISSUES.
        cx, cz: centre, lateral and depth below the skin (cm).
        a, b: half-length along the rotated axis and half-thickness across it (cm).
        rot: rotation (radians, positive turns the long axis downwards to the right).
        bend: curvature (1/cm) bending the long axis into an arc (crescent, bean).
        taper: thickness grows by this fraction towards +a (pear, wedge).
        square: 0 = ellipse, up to ~0.8 = rounded rectangle (a filled bladder).
        echo: echogenicity offset (dB) of this instance (fatty liver, dense kidney).
    """
    return (float(TISSUE_ID[tissue]), cx, cz, a, b, rot, bend, taper, square, echo)


def empty_slots() -> np.ndarray:
    """Return a (MAX_SLOTS, len(SLOT_FIELDS)) float32 array of empty slots."""
    rows = np.zeros((MAX_SLOTS, len(SLOT_FIELDS)), dtype=np.float32)
    rows[:, 0] = -1.0
    rows[:, 3:5] = 1.0
    return rows


def pack_slots(rows: list[tuple[float, ...]]) -> np.ndarray:
    """Return the slot rows packed into a fixed-size array (extra rows are an error)."""
    if len(rows) > MAX_SLOTS:
        raise ValueError(f"scene has {len(rows)} shapes; at most {MAX_SLOTS} fit")
    packed = empty_slots()
    if rows:
        packed[: len(rows)] = np.asarray(rows, dtype=np.float32)
    return packed


@dataclass
class TissueMaps:
    """Tissue maps of a batch on the anatomy grid, all (B, H, W) unless noted.

    Attributes:
        echo_db: backscatter level (dB re liver).
        att: attenuation (dB/cm/MHz).
        wall: specular boundary amplitude.
        tex: scatterer heterogeneity.
        organs: (B, len(ORGANS), H, W) soft organ masks (occlusion by later shapes applied).
    """

    echo_db: torch.Tensor
    att: torch.Tensor
    wall: torch.Tensor
    tex: torch.Tensor
    organs: torch.Tensor


# Shapes are polynomials q(x, z) <= 1 in the grid coordinates (in dm, so powers stay small):
# an ellipse is quadratic, bending adds u^2 to v (degree 4), tapering multiplies v by (1 - t u)
# (degree 6); a rounded rectangle is (1 - s)(u^2 + v^2) + s (u^4 + v^4). Writing every shape as
# coefficients over the same monomials turns the evaluation of all shapes on all grid points
# into one batched matrix product, which is what makes the phantom fast on a CPU.
DEGREE = 6
MONOMIALS: tuple[tuple[int, int], ...] = tuple(
    (i, j) for i in range(DEGREE + 1) for j in range(DEGREE + 1 - i)
)
_UNIT = 10.0  # cm per coordinate unit


def _poly_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return the product of two batches of polynomials (..., D+1, D+1), truncated at DEGREE."""
    out = np.zeros(np.broadcast_shapes(p.shape, q.shape))
    for i, j in MONOMIALS:
        coef = p[..., i, j]
        if not coef.any():
            continue
        out[..., i:, j:] += coef[..., None, None] * q[..., : DEGREE + 1 - i, : DEGREE + 1 - j]
    return out


def shape_polynomials(slots: np.ndarray) -> np.ndarray:
    """Return (..., len(MONOMIALS)) coefficients of q for slot rows (...) of SLOT_FIELDS.

    A point (x, z) (in units of 10 cm) is inside the shape where q(x, z) < 1.
    """
    f = {name: slots[..., i].astype(np.float64) for i, name in enumerate(SLOT_FIELDS)}
    cx, cz, a, b = f["cx"] / _UNIT, f["cz"] / _UNIT, f["a"] / _UNIT, f["b"] / _UNIT
    cos, sin = np.cos(f["rot"]), np.sin(f["rot"])
    shape = slots.shape[:-1] + (DEGREE + 1, DEGREE + 1)
    u, v = np.zeros(shape), np.zeros(shape)
    u[..., 1, 0], u[..., 0, 1] = cos / a, sin / a
    u[..., 0, 0] = -(cos * cx + sin * cz) / a
    v[..., 1, 0], v[..., 0, 1] = -sin / b, cos / b
    v[..., 0, 0] = (sin * cx - cos * cz) / b
    uu = _poly_mul(u, u)
    square = f["square"][..., None, None]
    # Bend and taper apply to plain shapes; squared shapes stay symmetric.
    w = v - (f["bend"] * _UNIT * a * a / b)[..., None, None] * uu * (square == 0)
    taper = np.zeros(shape)
    taper[..., 0, 0] = 1.0
    taper = taper - f["taper"][..., None, None] * u * (square == 0)
    w = _poly_mul(w, taper)
    plain = uu + _poly_mul(w, w)
    vv = _poly_mul(v, v)
    boxy = _poly_mul(uu, uu) + _poly_mul(vv, vv)
    q = (1 - square) * plain + square * boxy
    return np.stack([q[..., i, j] for i, j in MONOMIALS], axis=-1)


def monomials(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Return (B, len(MONOMIALS), H*W) powers x^i z^j of grid points (cm), in 10 cm units.

    float32 is enough: with coordinates in 10 cm units, the masks differ from a float64
    evaluation by less than 1e-3.
    """
    import torch

    xs = x.reshape(x.shape[0], -1) / _UNIT
    zs = z.reshape(z.shape[0], -1) / _UNIT
    xp, zp = [torch.ones_like(xs)], [torch.ones_like(zs)]
    for _ in range(DEGREE):
        xp.append(xp[-1] * xs)
        zp.append(zp[-1] * zs)
    out = torch.empty(xs.shape[0], len(MONOMIALS), xs.shape[1])
    for k, (i, j) in enumerate(MONOMIALS):
        torch.mul(xp[i], zp[j], out=out[:, k])  # contiguous rows: fast writes
    return out


def shape_masks(
    x: torch.Tensor, z: torch.Tensor, slots: np.ndarray, edge: torch.Tensor
) -> torch.Tensor:
    """Return the soft masks (B, K, H*W) in [0, 1] of the K slots at points (x, z).

    Args:
        x, z: (B, H, W) lateral and depth coordinates (cm) of the grid points.
        slots: (B, K, len(SLOT_FIELDS)) slot rows (numpy).
        edge: (B,) width (cm) of the soft edge, about one grid cell so edges do not alias.
    """
    import torch

    coef = torch.as_tensor(shape_polynomials(slots), dtype=torch.float32)  # (B, K, M)
    q = torch.bmm(coef, monomials(x, z))  # (B, K, N)
    b = torch.as_tensor(slots[..., 4], dtype=torch.float32)
    # Near the boundary |grad q| ~ 2 / b, so this ramp is about `edge` cm wide there.
    slope = ((b / (2.0 * edge[:, None])) * torch.as_tensor(slots[..., 0] >= 0))[..., None]
    return torch.addcmul(0.5 * slope, 1.0 - q, slope).clamp_(0.0, 1.0)


def tissue_maps(
    x: torch.Tensor,
    z: torch.Tensor,
    depth: torch.Tensor,
    slots: np.ndarray,
    wall_layers: torch.Tensor,
    edge: torch.Tensor,
    texture: torch.Tensor,
) -> TissueMaps:
    """Return the tissue maps of a batch: background, then slots in order, then the body wall.

    Args:
        x, z: (B, H, W) grid coordinates (cm).
        depth: (B, H, W) radial depth below the skin (cm), along each scan line.
        slots: (B, K, F) slot rows (numpy).
        wall_layers: (B, 4) skin, fat and muscle thickness (cm) and fat echo offset (dB).
        edge: (B,) soft-edge width (cm).
        texture: (B, H, W) smooth zero-mean field for tissue heterogeneity.
    """
    import torch

    batch, height, width = x.shape
    tissue = np.clip(slots[..., 0].astype(np.int64), 0, None)  # (B, K)
    props = _TABLE[tissue]  # (B, K, 4)
    props[..., 0] += slots[..., 9]
    props = torch.as_tensor(props).transpose(1, 2)  # (B, 4, K)
    onehot = torch.as_tensor(_ORGAN_ONEHOT[tissue]).transpose(1, 2)  # (B, 6, K)
    masks = shape_masks(x, z, slots, edge)  # (B, K, N)
    # Painter's order: slot k shows where it is and no later slot covers it. A loop over the
    # (few) slots beats torch.cumprod here by ~10x.
    keep = 1.0 - masks
    cover_after = torch.empty_like(masks)
    running = torch.ones_like(masks[:, 0])
    for k in range(masks.shape[1] - 1, -1, -1):
        cover_after[:, k] = running
        running = running * keep[:, k]
    weights = masks * cover_after  # (B, K, N)
    rim = 4.0 * weights * keep
    bg = TISSUES["mesentery"]
    mixed = torch.bmm(props[:, [0, 1, 3]], weights) + running[:, None] * torch.tensor(
        [[bg.echo_db], [bg.att], [bg.tex]]
    )
    echo, att, tex = mixed.view(batch, 3, height, width).unbind(1)
    wall = torch.bmm(props[:, 2:3], rim).view(batch, height, width)
    organs = torch.bmm(onehot, weights).view(batch, -1, height, width)

    # Body wall: bright skin line, hypoechoic fat with echogenic septa (thicker with the
    # habitus), striated muscle, bright fascia/peritoneal line. It depends on the radial depth
    # only (plus the texture field for wavy septa), like the layers under a convex probe.
    skin, fat, muscle, fat_echo = (wall_layers[:, i, None, None] for i in range(4))
    bottom = skin + fat + muscle
    in_fat = (depth >= skin) & (depth < skin + fat)
    in_muscle = (depth >= skin + fat) & (depth < bottom)
    in_wall = (depth < bottom).float()
    septa = 18.0 * torch.relu(torch.cos(2 * np.pi * depth / 0.55 + 2.5 * texture) - 0.7)
    fibres = 6.0 * torch.cos(2 * np.pi * depth / 0.3 + 1.5 * texture)
    layer_echo = torch.where(
        in_fat, -10.0 + fat_echo + septa, torch.where(in_muscle, -11.0 + fibres, 6.0)
    )
    layer_att = torch.where(in_fat, 0.9, torch.where(in_muscle, 1.0, 0.6))
    echo = torch.lerp(echo, layer_echo, in_wall)
    att = torch.lerp(att, layer_att, in_wall)
    tex = torch.lerp(tex, torch.full_like(tex, 0.3), in_wall)
    fascia = torch.exp(-(((depth - bottom) / (0.6 * edge[:, None, None])) ** 2))
    wall = wall * (1 - in_wall) + 0.8 * fascia
    organs = organs * (1 - in_wall)[:, None]
    echo = echo + 6.0 * tex * texture
    return TissueMaps(echo_db=echo, att=att, wall=wall, tex=tex, organs=organs)
