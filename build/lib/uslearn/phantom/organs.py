"""Where the organs of a phantom view lie: the view's frame and the organ placers.

A placer returns anatomy slots (see ``anatomy.slot``) for one organ (liver with its veins,
kidney with sinus and pyramids, gallbladder, ribs, bowel loops, diaphragm) or for a neighbour
peeking in at the edge, in physical coordinates: x is lateral (cm, positive to the image
right), z is depth below the skin at the centre line. ``views`` composes them into the
standard planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uslearn.phantom.anatomy import slot

Row = tuple[float, ...]


@dataclass(frozen=True)
class ViewContext:
    """What a view sampler needs to know about the probe, the patient and the difficulty.

    Attributes:
        depth: imaging depth (cm).
        radius: convex probe radius (cm).
        half_angle: half the sector angle (radians).
        wall: body wall thickness (cm): organs lie below it.
        patient: patient traits (see ``exams.Patient``), read with getattr.
        difficulty: 0 = easy, 1 = default, up to ~2 = hard.
    """

    depth: float
    radius: float
    half_angle: float
    wall: float
    patient: object
    difficulty: float

    def half_width(self, z: float) -> float:
        """Return the half-width (cm) of the fan at depth z."""
        return (self.radius + z) * float(np.sin(self.half_angle))

    def at(self, fz: float) -> float:
        """Return the depth (cm) at fraction fz of the space between the body wall and the bottom."""
        return self.wall + fz * (self.depth - self.wall)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Return one draw of U(lo, hi) as a float."""
    return float(rng.uniform(lo, hi))


def chance(rng: np.random.Generator, ctx: ViewContext, base: float) -> bool:
    """Return True with probability base x difficulty (hard cases become rarer when easy)."""
    return bool(rng.random() < min(0.9, base * ctx.difficulty))


def liver(rng, ctx: ViewContext, fz: float, scale: float = 1.0) -> list[Row]:
    """Liver parenchyma with hepatic veins and portal branches."""
    echo = getattr(ctx.patient, "liver_echo", 0.0)
    tissue = "fat_liver" if getattr(ctx.patient, "fatty_liver", False) else "liver"
    cz = ctx.at(fz)
    a = scale * uniform(rng, 10, 15)
    b = scale * uniform(rng, 0.45, 0.6) * (ctx.depth - ctx.wall)
    rows = [slot(tissue, uniform(rng, -3, 3), cz, a, b, uniform(rng, -0.35, 0.35), echo=echo)]
    n_veins = int(rng.integers(1, 4))
    sink_x, sink_z = uniform(rng, -4, 4), cz + b * uniform(rng, 0.5, 1.0)
    for _ in range(n_veins):
        vx, vz = uniform(rng, -0.5, 0.5) * a, cz + uniform(rng, -0.3, 0.4) * b
        rot = float(np.arctan2(sink_z - vz, sink_x - vx))
        rows.append(slot("vein", vx, vz, uniform(rng, 1.0, 3.0), uniform(rng, 0.2, 0.4), rot))
    for _ in range(int(rng.integers(0, 3))):
        rows.append(
            slot(
                "portal",
                uniform(rng, -0.5, 0.5) * a,
                cz + uniform(rng, -0.4, 0.5) * b,
                uniform(rng, 0.6, 2.0),
                uniform(rng, 0.25, 0.5),
                uniform(rng, -1.5, 1.5),
            )
        )
    return rows


def kidney(
    rng, ctx: ViewContext, cx: float, cz: float, scale: float = 1.0, pyramids: bool = True
) -> list[Row]:
    """Kidney: perirenal fat rim, darker cortex, dark pyramids, bright central sinus."""
    length = getattr(ctx.patient, "kidney_length", 11.0) * scale
    a, b = length / 2 * uniform(rng, 0.85, 1.05), length / 2 * uniform(rng, 0.38, 0.5)
    rot, bend = uniform(rng, -0.7, 0.7), uniform(rng, -0.03, 0.03)
    rows = [
        slot("perirenal_fat", cx, cz, a + 0.7, b + 0.6, rot, bend),
        slot("kidney_cortex", cx, cz, a, b, rot, bend, echo=uniform(rng, -2, 2)),
    ]
    cos, sin = np.cos(rot), np.sin(rot)
    n_pairs = int(rng.integers(0, 3)) if pyramids else 0
    for along in (-0.4, 0.4)[:n_pairs]:
        for side in (-1, 1):
            u, v = along * a, side * 0.55 * b
            rows.append(
                slot("kidney_pyramid", cx + u * cos - v * sin, cz + u * sin + v * cos, 0.6, 0.45)
            )
    rows.append(
        slot(
            "kidney_sinus",
            cx,
            cz,
            a * uniform(rng, 0.6, 0.75),
            b * uniform(rng, 0.35, 0.5),
            rot,
            bend,
        )
    )
    return rows


def ribs(rng, ctx: ViewContext, n: int) -> list[Row]:
    """Rib cross-sections just under the body wall: bright arcs with full shadows below."""
    z = ctx.wall + uniform(rng, 0.2, 1.0)
    half = ctx.half_width(z)
    return [
        slot(
            "bone",
            uniform(rng, -0.9, 0.9) * half,
            z,
            uniform(rng, 0.7, 1.1),
            uniform(rng, 0.35, 0.5),
        )
        for _ in range(n)
    ]


def bowel(rng, ctx: ViewContext, n: int, z_range=(0.05, 0.9), gas_p: float = 0.5) -> list[Row]:
    """Bowel loops: layered walls around mixed content; gas makes a bright line and a shadow."""
    rows = []
    for _ in range(n):
        cz = ctx.at(uniform(rng, *z_range))
        cx = uniform(rng, -0.9, 0.9) * ctx.half_width(cz)
        a, b = uniform(rng, 0.8, 2.5), uniform(rng, 0.6, 1.4)
        content = "fluid" if rng.random() < 0.3 else "bowel"
        rows.append(slot(content, cx, cz, a, b, uniform(rng, -1.5, 1.5)))
        if rng.random() < gas_p:
            rows.append(slot("gas", cx, cz - 0.6 * b, 0.7 * a, 0.25, uniform(rng, -0.3, 0.3)))
    return rows


def peek(rng, ctx: ViewContext, organ: str) -> list[Row]:
    """A neighbouring organ at the edge of the field: a small, hard-to-see part of it."""
    side = rng.choice(["bottom", "left", "right"])
    if side == "bottom":
        cz, cx = (
            ctx.depth + uniform(rng, 0.5, 2.5),
            uniform(rng, -0.5, 0.5) * ctx.half_width(ctx.depth),
        )
    else:
        cz = ctx.at(uniform(rng, 0.3, 0.9))
        cx = (1 if side == "right" else -1) * (ctx.half_width(cz) + uniform(rng, 0.5, 2.5))
    if organ == "kidney":
        return kidney(rng, ctx, cx, cz, 0.8, pyramids=False)
    if organ == "gallbladder":
        return [
            slot(
                "gallbladder",
                cx,
                cz,
                uniform(rng, 2.5, 3.5),
                uniform(rng, 1.2, 1.8),
                uniform(rng, -1, 1),
            )
        ]
    if organ == "spleen":
        return [
            slot(
                "spleen",
                cx,
                cz,
                uniform(rng, 4, 6),
                uniform(rng, 1.8, 2.5),
                uniform(rng, -0.5, 0.5),
            )
        ]
    return [
        slot(
            "pancreas", cx, cz, uniform(rng, 3, 5), uniform(rng, 0.8, 1.2), uniform(rng, -0.3, 0.3)
        )
    ]


def gallbladder(rng, ctx: ViewContext, cx: float, cz: float) -> list[Row]:
    """Pear-shaped anechoic gallbladder; sometimes contracted or holding a shadowing stone."""
    contracted = rng.random() < 0.15
    a = uniform(rng, 1.8, 2.5) if contracted else uniform(rng, 3.0, 5.0)
    b = uniform(rng, 0.8, 1.1) if contracted else uniform(rng, 1.4, 2.2)
    rot = uniform(rng, -0.9, 0.9)
    rows = [
        slot("gallbladder", cx, cz, a, b, rot, uniform(rng, -0.04, 0.04), uniform(rng, 0.2, 0.5))
    ]
    if rng.random() < 0.1:
        rows.append(slot("stone", cx + 0.3 * a * np.cos(rot), cz + 0.5 * b, 0.45, 0.35))
    return rows


def diaphragm(rng, ctx: ViewContext, cz: float) -> list[Row]:
    """The bright curved diaphragm crossing the deep part of a subcostal liver view."""
    return [
        slot(
            "diaphragm",
            uniform(rng, -3, 3),
            cz,
            uniform(rng, 9, 14),
            uniform(rng, 0.15, 0.3),
            uniform(rng, -0.3, 0.3),
            uniform(rng, -0.06, -0.02),
        )
    ]
