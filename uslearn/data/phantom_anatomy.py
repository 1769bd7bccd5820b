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

import numpy as np
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
    "mesentery": Tissue(1.0, 0.7, 0.0, 0.55),
    "liver": Tissue(0.0, 0.5, 1.4, 0.12, "liver"),
    "gallbladder": Tissue(-50.0, 0.01, 2.2, 0.0, "gallbladder"),
    "kidney_cortex": Tissue(-5.0, 0.6, 1.6, 0.15, "kidney"),
    "kidney_sinus": Tissue(8.0, 0.7, 0.0, 0.6, "kidney"),
    "kidney_pyramid": Tissue(-15.0, 0.5, 0.0, 0.1, "kidney"),
    "pancreas": Tissue(4.0, 0.6, 0.6, 0.35, "pancreas"),
    "spleen": Tissue(2.5, 0.5, 1.3, 0.1, "spleen"),
    "bladder": Tissue(-50.0, 0.01, 1.8, 0.0, "bladder"),
    "vein": Tissue(-45.0, 0.05, 0.0, 0.0),
    "portal": Tissue(-45.0, 0.05, 2.0, 0.0),
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


def shape_masks(x: torch.Tensor, z: torch.Tensor, slots: torch.Tensor, edge: torch.Tensor):
    """Return the soft masks (B, K, H, W) in [0, 1] of the K slots at points (x, z).

    Args:
        x, z: (B, H, W) lateral and depth coordinates (cm) of the grid points.
        slots: (B, K, len(SLOT_FIELDS)) slot rows.
        edge: (B,) width (cm) of the soft edge, about one grid cell so edges do not alias.
    """
    p = slots[..., :, None, None]  # (B, K, F, 1, 1)
    cx, cz, a, b, rot = p[:, :, 1], p[:, :, 2], p[:, :, 3], p[:, :, 4], p[:, :, 5]
    bend, taper, square = p[:, :, 6], p[:, :, 7], p[:, :, 8]
    dx = x[:, None] - cx
    dz = z[:, None] - cz
    cos, sin = torch.cos(rot), torch.sin(rot)
    u = dx * cos + dz * sin
    v = dz * cos - dx * sin - bend * u * u
    un = u / a
    vn = v / (b * (1.0 + taper * un).clamp(min=0.15))
    un2, vn2 = un * un, vn * vn
    q = un2 + vn2 - square * un2 * vn2
    # (1 - q) ~ 2 (1 - rho) near the boundary, so this ramp is about `edge` cm wide there.
    masks = (0.5 + (1.0 - q) * b / (2.0 * edge[:, None, None, None])).clamp(0.0, 1.0)
    active = (slots[..., 0] >= 0).to(masks.dtype)[..., None, None]
    return masks * active


def tissue_maps(
    x: torch.Tensor,
    z: torch.Tensor,
    depth: torch.Tensor,
    slots: torch.Tensor,
    wall_layers: torch.Tensor,
    edge: torch.Tensor,
    texture: torch.Tensor,
) -> TissueMaps:
    """Return the tissue maps of a batch: background, then slots in order, then the body wall.

    Args:
        x, z: (B, H, W) grid coordinates (cm).
        depth: (B, H, W) radial depth below the skin (cm), along each scan line.
        slots: (B, K, F) slot rows.
        wall_layers: (B, 4) skin, fat and muscle thickness (cm) and fat echo offset (dB).
        edge: (B,) soft-edge width (cm).
        texture: (B, H, W) smooth zero-mean field for tissue heterogeneity.
    """
    table = torch.as_tensor(_TABLE)
    onehot = torch.as_tensor(_ORGAN_ONEHOT)
    tissue = slots[..., 0].long().clamp(min=0)  # (B, K)
    props = table[tissue]  # (B, K, 4)
    props[..., 0] += slots[..., 9]
    masks = shape_masks(x, z, slots, edge)  # (B, K, H, W)
    # Painter's order: slot k shows where it is and no later slot covers it.
    keep = 1.0 - masks
    cover_after = torch.flip(torch.cumprod(torch.flip(keep, [1]), 1), [1])
    cover_after = torch.cat([cover_after[:, 1:], torch.ones_like(cover_after[:, :1])], 1)
    weights = masks * cover_after  # (B, K, H, W)
    background = cover_after[:, 0] * keep[:, 0]  # share of the background tissue
    bg = TISSUES["mesentery"]
    channels = torch.einsum("bkhw,bkc->bchw", weights, props[..., [0, 1, 3]])
    echo = channels[:, 0] + background * bg.echo_db
    att = channels[:, 1] + background * bg.att
    tex = channels[:, 2] + background * bg.tex
    rim = 4.0 * masks * (1.0 - masks) * cover_after
    wall = torch.einsum("bkhw,bk->bhw", rim, props[..., 2])
    organs = torch.einsum("bkhw,bkc->bchw", weights, onehot[tissue])

    # Body wall: bright skin line, hypoechoic fat (thicker with habitus), striated muscle,
    # bright peritoneal line. It depends on radial depth only, like the layers under a probe.
    skin, fat, muscle, fat_echo = (wall_layers[:, i, None, None] for i in range(4))
    in_fat = (depth >= skin) & (depth < skin + fat)
    in_muscle = (depth >= skin + fat) & (depth < skin + fat + muscle)
    in_wall = (depth < skin + fat + muscle).to(echo.dtype)
    layer_echo = torch.where(in_fat, -8.0 + fat_echo, torch.where(in_muscle, -10.0, 6.0))
    layer_att = torch.where(in_fat, 0.9, torch.where(in_muscle, 1.0, 0.6)).to(echo.dtype)
    echo = echo * (1 - in_wall) + layer_echo * in_wall
    att = att * (1 - in_wall) + layer_att * in_wall
    tex = tex * (1 - in_wall) + 0.45 * in_wall
    peritoneum = torch.exp(-(((depth - (skin + fat + muscle)) / edge[:, None, None]) ** 2))
    wall = wall * (1 - in_wall) + 1.2 * peritoneum
    organs = organs * (1 - in_wall)[:, None]
    echo = echo + 6.0 * tex * texture
    return TissueMaps(echo_db=echo, att=att, wall=wall, tex=tex, organs=organs)
