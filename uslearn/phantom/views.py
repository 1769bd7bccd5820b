"""Standard abdominal views of the phantom: which organs a plane shows and where.

Each view sampler places slots (see ``anatomy.slot``) in physical coordinates: x is
lateral (cm, positive to the image right), z is depth below the skin at the centre line. The
organs a view *intends* to show are placed inside the field of view; with a probability that
grows with ``difficulty`` a neighbouring organ peeks in at the edge, an organ is small or
partly outside, or bowel gas and ribs shadow part of it. The labels are not taken from the
view name: the renderer measures what is actually visible (see ``bmode``).
"""

from __future__ import annotations

from collections.abc import Callable
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


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _p(rng: np.random.Generator, ctx: ViewContext, base: float) -> bool:
    """Return True with probability base x difficulty (hard cases become rarer when easy)."""
    return bool(rng.random() < min(0.9, base * ctx.difficulty))


def _liver(rng, ctx: ViewContext, fz: float, scale: float = 1.0) -> list[Row]:
    """Liver parenchyma with hepatic veins and portal branches."""
    echo = getattr(ctx.patient, "liver_echo", 0.0)
    tissue = "fat_liver" if getattr(ctx.patient, "fatty_liver", False) else "liver"
    cz = ctx.at(fz)
    a = scale * _u(rng, 10, 15)
    b = scale * _u(rng, 0.45, 0.6) * (ctx.depth - ctx.wall)
    rows = [slot(tissue, _u(rng, -3, 3), cz, a, b, _u(rng, -0.35, 0.35), echo=echo)]
    n_veins = int(rng.integers(1, 4))
    sink_x, sink_z = _u(rng, -4, 4), cz + b * _u(rng, 0.5, 1.0)
    for _ in range(n_veins):
        vx, vz = _u(rng, -0.5, 0.5) * a, cz + _u(rng, -0.3, 0.4) * b
        rot = float(np.arctan2(sink_z - vz, sink_x - vx))
        rows.append(slot("vein", vx, vz, _u(rng, 1.0, 3.0), _u(rng, 0.2, 0.4), rot))
    for _ in range(int(rng.integers(0, 3))):
        rows.append(
            slot(
                "portal",
                _u(rng, -0.5, 0.5) * a,
                cz + _u(rng, -0.4, 0.5) * b,
                _u(rng, 0.6, 2.0),
                _u(rng, 0.25, 0.5),
                _u(rng, -1.5, 1.5),
            )
        )
    return rows


def _kidney(
    rng, ctx: ViewContext, cx: float, cz: float, scale: float = 1.0, pyramids: bool = True
) -> list[Row]:
    """Kidney: perirenal fat rim, darker cortex, dark pyramids, bright central sinus."""
    length = getattr(ctx.patient, "kidney_length", 11.0) * scale
    a, b = length / 2 * _u(rng, 0.85, 1.05), length / 2 * _u(rng, 0.38, 0.5)
    rot, bend = _u(rng, -0.7, 0.7), _u(rng, -0.03, 0.03)
    rows = [
        slot("perirenal_fat", cx, cz, a + 0.7, b + 0.6, rot, bend),
        slot("kidney_cortex", cx, cz, a, b, rot, bend, echo=_u(rng, -2, 2)),
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
        slot("kidney_sinus", cx, cz, a * _u(rng, 0.6, 0.75), b * _u(rng, 0.35, 0.5), rot, bend)
    )
    return rows


def _ribs(rng, ctx: ViewContext, n: int) -> list[Row]:
    """Rib cross-sections just under the body wall: bright arcs with full shadows below."""
    z = ctx.wall + _u(rng, 0.2, 1.0)
    half = ctx.half_width(z)
    return [
        slot("bone", _u(rng, -0.9, 0.9) * half, z, _u(rng, 0.7, 1.1), _u(rng, 0.35, 0.5))
        for _ in range(n)
    ]


def _bowel(rng, ctx: ViewContext, n: int, z_range=(0.05, 0.9), gas_p: float = 0.5) -> list[Row]:
    """Bowel loops: layered walls around mixed content; gas makes a bright line and a shadow."""
    rows = []
    for _ in range(n):
        cz = ctx.at(_u(rng, *z_range))
        cx = _u(rng, -0.9, 0.9) * ctx.half_width(cz)
        a, b = _u(rng, 0.8, 2.5), _u(rng, 0.6, 1.4)
        content = "fluid" if rng.random() < 0.3 else "bowel"
        rows.append(slot(content, cx, cz, a, b, _u(rng, -1.5, 1.5)))
        if rng.random() < gas_p:
            rows.append(slot("gas", cx, cz - 0.6 * b, 0.7 * a, 0.25, _u(rng, -0.3, 0.3)))
    return rows


def _peek(rng, ctx: ViewContext, organ: str) -> list[Row]:
    """A neighbouring organ at the edge of the field: a small, hard-to-see part of it."""
    side = rng.choice(["bottom", "left", "right"])
    if side == "bottom":
        cz, cx = ctx.depth + _u(rng, 0.5, 2.5), _u(rng, -0.5, 0.5) * ctx.half_width(ctx.depth)
    else:
        cz = ctx.at(_u(rng, 0.3, 0.9))
        cx = (1 if side == "right" else -1) * (ctx.half_width(cz) + _u(rng, 0.5, 2.5))
    if organ == "kidney":
        return _kidney(rng, ctx, cx, cz, 0.8, pyramids=False)
    if organ == "gallbladder":
        return [slot("gallbladder", cx, cz, _u(rng, 2.5, 3.5), _u(rng, 1.2, 1.8), _u(rng, -1, 1))]
    if organ == "spleen":
        return [slot("spleen", cx, cz, _u(rng, 4, 6), _u(rng, 1.8, 2.5), _u(rng, -0.5, 0.5))]
    return [slot("pancreas", cx, cz, _u(rng, 3, 5), _u(rng, 0.8, 1.2), _u(rng, -0.3, 0.3))]


def _gallbladder(rng, ctx: ViewContext, cx: float, cz: float) -> list[Row]:
    """Pear-shaped anechoic gallbladder; sometimes contracted or holding a shadowing stone."""
    contracted = rng.random() < 0.15
    a = _u(rng, 1.8, 2.5) if contracted else _u(rng, 3.0, 5.0)
    b = _u(rng, 0.8, 1.1) if contracted else _u(rng, 1.4, 2.2)
    rot = _u(rng, -0.9, 0.9)
    rows = [slot("gallbladder", cx, cz, a, b, rot, _u(rng, -0.04, 0.04), _u(rng, 0.2, 0.5))]
    if rng.random() < 0.1:
        rows.append(slot("stone", cx + 0.3 * a * np.cos(rot), cz + 0.5 * b, 0.45, 0.35))
    return rows


def _diaphragm(rng, ctx: ViewContext, cz: float) -> list[Row]:
    """The bright curved diaphragm crossing the deep part of a subcostal liver view."""
    return [
        slot(
            "diaphragm",
            _u(rng, -3, 3),
            cz,
            _u(rng, 9, 14),
            _u(rng, 0.15, 0.3),
            _u(rng, -0.3, 0.3),
            _u(rng, -0.06, -0.02),
        )
    ]


def view_liver(rng, ctx: ViewContext) -> list[Row]:
    """Right lobe, subcostal or intercostal: liver fills the field, veins, maybe rib shadows."""
    rows = _liver(rng, ctx, _u(rng, 0.4, 0.55), 1.1)
    if rng.random() < 0.5:
        rows += _diaphragm(rng, ctx, ctx.at(_u(rng, 0.7, 0.9)))
    if rng.random() < 0.45:
        rows += _ribs(rng, ctx, int(rng.integers(1, 3)))
    if rng.random() < 0.15:  # a simple cyst or the IVC in cross-section: dark, not an organ
        cz = ctx.at(_u(rng, 0.3, 0.8))
        size = _u(rng, 0.8, 2.5)
        rows.append(slot("fluid", _u(rng, -0.5, 0.5) * ctx.half_width(cz), cz, size, size * 0.8))
    if _p(rng, ctx, 0.12):
        rows += _peek(rng, ctx, str(rng.choice(["kidney", "gallbladder"])))
    return rows


def view_liver_gallbladder(rng, ctx: ViewContext) -> list[Row]:
    """Liver with the gallbladder below it at mid depth (posterior enhancement below)."""
    rows = _liver(rng, ctx, _u(rng, 0.35, 0.5))
    cz = ctx.at(_u(rng, 0.35, 0.7))
    rows += _gallbladder(rng, ctx, _u(rng, -0.45, 0.45) * ctx.half_width(cz), cz)
    if rng.random() < 0.3:
        rows += _bowel(rng, ctx, 1, (0.75, 0.95))
    return rows


def view_liver_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Morison's pouch: liver above, right kidney deeper, separated by bright fat."""
    rows = _liver(rng, ctx, _u(rng, 0.2, 0.35), 0.9)[:4]
    cz = ctx.at(_u(rng, 0.55, 0.75))
    rows += _kidney(rng, ctx, _u(rng, -0.3, 0.4) * ctx.half_width(cz), cz)
    if rng.random() < 0.25:
        rows += _ribs(rng, ctx, 1)
    return rows


def view_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Flank view of a kidney alone, psoas muscle below, bowel gas around it."""
    cz = ctx.at(_u(rng, 0.4, 0.6))
    rows = [slot("muscle", _u(rng, -3, 3), ctx.depth * 1.05, 6.0, 3.0, _u(rng, -0.3, 0.3))]
    rows += _bowel(rng, ctx, int(rng.integers(0, 3)), (0.05, 0.3), gas_p=0.6)
    rows += _kidney(rng, ctx, _u(rng, -0.3, 0.3) * ctx.half_width(cz), cz, _u(rng, 0.95, 1.15))
    if _p(rng, ctx, 0.08):
        rows += _peek(rng, ctx, "spleen")
    return rows


def view_spleen(rng, ctx: ViewContext) -> list[Row]:
    """Left intercostal view: spleen crescent, rib shadows, stomach gas medially."""
    cz = ctx.at(_u(rng, 0.3, 0.5))
    rows = _bowel(rng, ctx, int(rng.integers(0, 2)), (0.6, 0.95), gas_p=0.7)
    rows.append(
        slot(
            "spleen",
            _u(rng, -2, 2),
            cz,
            _u(rng, 5.0, 7.0),
            _u(rng, 1.8, 3.0),
            _u(rng, -0.6, 0.6),
            _u(rng, -0.09, -0.03),
            echo=_u(rng, -1.5, 1.5),
        )
    )
    if rng.random() < 0.6:
        rows += _ribs(rng, ctx, int(rng.integers(1, 3)))
    if _p(rng, ctx, 0.1):
        rows += _peek(rng, ctx, "kidney")
    return rows


def view_spleen_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Spleen above the left kidney (the splenorenal angle)."""
    cz = ctx.at(_u(rng, 0.2, 0.35))
    rows = [
        slot(
            "spleen",
            _u(rng, -3, 3),
            cz,
            _u(rng, 4.5, 6.5),
            _u(rng, 1.5, 2.5),
            _u(rng, -0.5, 0.5),
            _u(rng, -0.08, -0.02),
        )
    ]
    kz = ctx.at(_u(rng, 0.6, 0.8))
    rows += _kidney(rng, ctx, _u(rng, -0.3, 0.3) * ctx.half_width(kz), kz)
    if rng.random() < 0.5:
        rows += _ribs(rng, ctx, 1)
    return rows


def _pancreas_plane(rng, ctx: ViewContext, with_liver: bool, with_gb: bool) -> list[Row]:
    """Epigastric transverse plane: left lobe on top, pancreas band over the splenic vein."""
    rows: list[Row] = []
    pz = ctx.at(_u(rng, 0.4, 0.55))
    if with_liver:
        rows.append(
            slot(
                "liver",
                _u(rng, -4, 4),
                ctx.at(_u(rng, 0.0, 0.12)),
                _u(rng, 7, 11),
                _u(rng, 0.3, 0.45) * (pz - ctx.wall),
                _u(rng, -0.25, 0.25),
                taper=_u(rng, -0.4, 0.4),
                echo=getattr(ctx.patient, "liver_echo", 0.0),
            )
        )
    if with_gb:
        gz = ctx.at(_u(rng, 0.25, 0.4))
        rows += _gallbladder(rng, ctx, _u(rng, -0.8, -0.4) * ctx.half_width(gz), gz)[:1]
    px, rot, bend = _u(rng, -2.5, 2.5), _u(rng, -0.25, 0.25), _u(rng, -0.05, 0.0)
    a, b = _u(rng, 4.5, 7.5), _u(rng, 0.8, 1.3)
    if rng.random() < 0.3 * ctx.difficulty:
        a, b = a * 0.6, b * 0.8  # atrophic or partly imaged pancreas
    rows.append(slot("pancreas", px, pz, a, b, rot, bend, echo=_u(rng, -3, 3)))
    rows.append(slot("portal", px, pz + b + 0.35, 0.8 * a, 0.3, rot, bend))
    rows.append(slot("aorta", px + _u(rng, -1.5, 1.5), pz + b + 2.0, 0.9, 0.85))
    rows.append(slot("bone", px, ctx.depth * _u(rng, 0.85, 1.0), 2.5, 1.2, 0.0, -0.1))
    if rng.random() < 0.5 * ctx.difficulty:
        rows += _bowel(rng, ctx, 1, (0.15, 0.3), gas_p=0.8)  # gas hides part of the gland
    return rows


def view_liver_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Transverse epigastric plane with the left lobe of the liver over the pancreas."""
    return _pancreas_plane(rng, ctx, with_liver=True, with_gb=False)


def view_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Transverse epigastric plane below the liver edge: pancreas, vessels, spine."""
    return _bowel(rng, ctx, 1, (0.05, 0.2), 0.3) + _pancreas_plane(rng, ctx, False, False)


def view_liver_gallbladder_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Oblique plane showing the liver, the gallbladder neck and the pancreatic head."""
    return _pancreas_plane(rng, ctx, with_liver=True, with_gb=True)


def view_bladder(rng, ctx: ViewContext) -> list[Row]:
    """Pelvic view: a large anechoic rounded bladder, uterus/prostate behind, bowel beside."""
    fill = getattr(ctx.patient, "bladder_fill", 1.0) * _u(rng, 0.7, 1.1)
    cz = ctx.at(_u(rng, 0.35, 0.5))
    a, b = _u(rng, 3.5, 5.5) * fill, _u(rng, 2.5, 4.0) * fill
    rows = _bowel(rng, ctx, int(rng.integers(0, 3)), (0.1, 0.5), gas_p=0.4)
    rows.append(slot("pelvic_organ", _u(rng, -1, 1), cz + b + _u(rng, 0.5, 2), 3.0, 2.0))
    rows.append(
        slot(
            "bladder",
            _u(rng, -1.5, 1.5),
            cz,
            a,
            b,
            _u(rng, -0.2, 0.2),
            _u(rng, -0.02, 0.03),
            square=_u(rng, 0.2, 0.7),
        )
    )
    for side in (-1, 1):
        if rng.random() < 0.5:
            bz = ctx.depth * _u(rng, 0.75, 0.95)
            rows.append(slot("bone", side * 0.8 * ctx.half_width(bz), bz, 2.0, 0.7, side * 0.5))
    return rows


def view_other(rng, ctx: ViewContext) -> list[Row]:
    """No organ of interest: bowel loops, aorta/IVC, stomach, midline with the spine, and
    look-alikes that make the task hard: a fluid-filled loop (like a gallbladder or bladder),
    a "pseudo-kidney" (thick-walled bowel with echogenic content), a muscle-filled field."""
    kind = rng.choice(
        ["bowel", "aorta", "stomach", "midline", "fluid_loop", "pseudokidney", "muscle"],
        p=[0.22, 0.14, 0.14, 0.14, 0.12, 0.12, 0.12],
    )
    if kind == "bowel":
        return _bowel(rng, ctx, int(rng.integers(3, 6)), gas_p=0.5)
    if kind in ("fluid_loop", "pseudokidney"):
        cz = ctx.at(_u(rng, 0.35, 0.65))
        cx, rot = _u(rng, -0.4, 0.4) * ctx.half_width(cz), _u(rng, -0.8, 0.8)
        a, b = _u(rng, 2.5, 5.0), _u(rng, 1.3, 2.8)
        rows = _bowel(rng, ctx, int(rng.integers(1, 3)), (0.05, 0.3), gas_p=0.6)
        if kind == "fluid_loop":
            rows.append(slot("fluid", cx, cz, a, b, rot, _u(rng, -0.05, 0.05), _u(rng, 0, 0.4)))
        else:
            rows.append(slot("muscle", cx, cz, a, b, rot, _u(rng, -0.03, 0.03)))
            rows.append(slot("perirenal_fat", cx, cz, 0.65 * a, 0.35 * b, rot))
        return rows + _bowel(rng, ctx, int(rng.integers(0, 2)), (0.7, 0.95))
    if kind == "muscle":
        cz = ctx.at(_u(rng, 0.3, 0.6))
        rows = [
            slot("muscle", _u(rng, -2, 2), cz, _u(rng, 8, 14), _u(rng, 3, 6), _u(rng, -0.4, 0.4))
        ]
        return rows + _bowel(rng, ctx, int(rng.integers(0, 3)), (0.6, 0.95))
    if kind == "aorta":
        cz = ctx.at(_u(rng, 0.5, 0.7))
        rows = _bowel(rng, ctx, int(rng.integers(1, 3)), (0.05, 0.35))
        rows.append(slot("aorta", _u(rng, -1, 1), cz, _u(rng, 7, 10), _u(rng, 0.8, 1.2)))
        rows.append(slot("bone", 0.0, cz + _u(rng, 2.5, 4), 9.0, 1.0, 0.0, 0.01))
        return rows
    if kind == "stomach":
        cz = ctx.at(_u(rng, 0.3, 0.5))
        content = "fluid" if rng.random() < 0.5 else "bowel"
        rows = [slot("muscle", _u(rng, -2, 2), cz, _u(rng, 4, 6), _u(rng, 2, 3.5))]
        rows.append(slot(content, rows[0][1], cz, rows[0][3] - 0.5, rows[0][4] - 0.5))
        if rng.random() < 0.5:
            rows.append(slot("gas", rows[0][1], cz - rows[0][4] + 0.9, 2.5, 0.3))
        return rows + _bowel(rng, ctx, int(rng.integers(0, 3)), (0.6, 0.95))
    cz = ctx.at(_u(rng, 0.55, 0.75))
    rows = _bowel(rng, ctx, int(rng.integers(1, 4)), (0.05, 0.4))
    rows.append(slot("aorta", _u(rng, 0.5, 2), cz, 1.0, 0.95))
    rows.append(slot("vein", _u(rng, -3, -1.5), cz, 1.4, 0.8))
    rows.append(slot("bone", 0.0, cz + _u(rng, 2.5, 3.5), 3.0, 1.3, 0.0, -0.1))
    return rows


VIEWS: dict[str, Callable[[np.random.Generator, ViewContext], list[Row]]] = {
    "liver": view_liver,
    "liver_gallbladder": view_liver_gallbladder,
    "liver_kidney": view_liver_kidney,
    "liver_pancreas": view_liver_pancreas,
    "liver_gallbladder_pancreas": view_liver_gallbladder_pancreas,
    "pancreas": view_pancreas,
    "kidney": view_kidney,
    "spleen": view_spleen,
    "spleen_kidney": view_spleen_kidney,
    "bladder": view_bladder,
    "other": view_other,
}
# Typical imaging depth (cm) a sonographer sets for each plane, before the habitus adds to it.
VIEW_DEPTH: dict[str, float] = {
    "liver": 16.0,
    "liver_gallbladder": 14.0,
    "liver_kidney": 16.0,
    "liver_pancreas": 14.0,
    "liver_gallbladder_pancreas": 14.0,
    "pancreas": 14.0,
    "kidney": 13.0,
    "spleen": 14.0,
    "spleen_kidney": 15.0,
    "bladder": 12.0,
    "other": 14.0,
}
