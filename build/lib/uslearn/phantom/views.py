"""Standard abdominal views of the phantom: which organs a plane shows and where.

Each view sampler composes the organ placers of ``organs`` into one plane (liver +
gallbladder, Morison's pouch, epigastric transverse, pelvic bladder, ...). The organs a view
*intends* to show are placed inside the field of view; with a probability that grows with
``difficulty`` a neighbouring organ peeks in at the edge, an organ is small or partly outside,
or bowel gas and ribs shadow part of it. The labels are not taken from the view name: the
renderer measures what is actually visible (see ``bmode``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from uslearn.phantom import organs
from uslearn.phantom.anatomy import slot
from uslearn.phantom.organs import Row, ViewContext, chance, uniform


def view_liver(rng, ctx: ViewContext) -> list[Row]:
    """Right lobe, subcostal or intercostal: liver fills the field, veins, maybe rib shadows."""
    rows = organs.liver(rng, ctx, uniform(rng, 0.4, 0.55), 1.1)
    if rng.random() < 0.5:
        rows += organs.diaphragm(rng, ctx, ctx.at(uniform(rng, 0.7, 0.9)))
    if rng.random() < 0.45:
        rows += organs.ribs(rng, ctx, int(rng.integers(1, 3)))
    if rng.random() < 0.15:  # a simple cyst or the IVC in cross-section: dark, not an organ
        cz = ctx.at(uniform(rng, 0.3, 0.8))
        size = uniform(rng, 0.8, 2.5)
        rows.append(
            slot("fluid", uniform(rng, -0.5, 0.5) * ctx.half_width(cz), cz, size, size * 0.8)
        )
    if chance(rng, ctx, 0.12):
        rows += organs.peek(rng, ctx, str(rng.choice(["kidney", "gallbladder"])))
    return rows


def view_liver_gallbladder(rng, ctx: ViewContext) -> list[Row]:
    """Liver with the gallbladder below it at mid depth (posterior enhancement below)."""
    rows = organs.liver(rng, ctx, uniform(rng, 0.35, 0.5))
    cz = ctx.at(uniform(rng, 0.35, 0.7))
    rows += organs.gallbladder(rng, ctx, uniform(rng, -0.45, 0.45) * ctx.half_width(cz), cz)
    if rng.random() < 0.3:
        rows += organs.bowel(rng, ctx, 1, (0.75, 0.95))
    return rows


def view_liver_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Morison's pouch: liver above, right kidney deeper, separated by bright fat."""
    rows = organs.liver(rng, ctx, uniform(rng, 0.2, 0.35), 0.9)[:4]
    cz = ctx.at(uniform(rng, 0.55, 0.75))
    rows += organs.kidney(rng, ctx, uniform(rng, -0.3, 0.4) * ctx.half_width(cz), cz)
    if rng.random() < 0.25:
        rows += organs.ribs(rng, ctx, 1)
    return rows


def view_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Flank view of a kidney alone, psoas muscle below, bowel gas around it."""
    cz = ctx.at(uniform(rng, 0.4, 0.6))
    rows = [
        slot("muscle", uniform(rng, -3, 3), ctx.depth * 1.05, 6.0, 3.0, uniform(rng, -0.3, 0.3))
    ]
    rows += organs.bowel(rng, ctx, int(rng.integers(0, 3)), (0.05, 0.3), gas_p=0.6)
    rows += organs.kidney(
        rng, ctx, uniform(rng, -0.3, 0.3) * ctx.half_width(cz), cz, uniform(rng, 0.95, 1.15)
    )
    if chance(rng, ctx, 0.08):
        rows += organs.peek(rng, ctx, "spleen")
    return rows


def view_spleen(rng, ctx: ViewContext) -> list[Row]:
    """Left intercostal view: spleen crescent, rib shadows, stomach gas medially."""
    cz = ctx.at(uniform(rng, 0.3, 0.5))
    rows = organs.bowel(rng, ctx, int(rng.integers(0, 2)), (0.6, 0.95), gas_p=0.7)
    rows.append(
        slot(
            "spleen",
            uniform(rng, -2, 2),
            cz,
            uniform(rng, 5.0, 7.0),
            uniform(rng, 1.8, 3.0),
            uniform(rng, -0.6, 0.6),
            uniform(rng, -0.09, -0.03),
            echo=uniform(rng, -1.5, 1.5),
        )
    )
    if rng.random() < 0.6:
        rows += organs.ribs(rng, ctx, int(rng.integers(1, 3)))
    if chance(rng, ctx, 0.1):
        rows += organs.peek(rng, ctx, "kidney")
    return rows


def view_spleen_kidney(rng, ctx: ViewContext) -> list[Row]:
    """Spleen above the left kidney (the splenorenal angle)."""
    cz = ctx.at(uniform(rng, 0.2, 0.35))
    rows = [
        slot(
            "spleen",
            uniform(rng, -3, 3),
            cz,
            uniform(rng, 4.5, 6.5),
            uniform(rng, 1.5, 2.5),
            uniform(rng, -0.5, 0.5),
            uniform(rng, -0.08, -0.02),
        )
    ]
    kz = ctx.at(uniform(rng, 0.6, 0.8))
    rows += organs.kidney(rng, ctx, uniform(rng, -0.3, 0.3) * ctx.half_width(kz), kz)
    if rng.random() < 0.5:
        rows += organs.ribs(rng, ctx, 1)
    return rows


def _pancreas_plane(rng, ctx: ViewContext, with_liver: bool, with_gb: bool) -> list[Row]:
    """Epigastric transverse plane: left lobe on top, pancreas band over the splenic vein."""
    rows: list[Row] = []
    pz = ctx.at(uniform(rng, 0.4, 0.55))
    if with_liver:
        rows.append(
            slot(
                "liver",
                uniform(rng, -4, 4),
                ctx.at(uniform(rng, 0.0, 0.12)),
                uniform(rng, 7, 11),
                uniform(rng, 0.3, 0.45) * (pz - ctx.wall),
                uniform(rng, -0.25, 0.25),
                taper=uniform(rng, -0.4, 0.4),
                echo=getattr(ctx.patient, "liver_echo", 0.0),
            )
        )
    if with_gb:
        gz = ctx.at(uniform(rng, 0.25, 0.4))
        rows += organs.gallbladder(rng, ctx, uniform(rng, -0.8, -0.4) * ctx.half_width(gz), gz)[:1]
    px, rot, bend = uniform(rng, -2.5, 2.5), uniform(rng, -0.25, 0.25), uniform(rng, -0.05, 0.0)
    a, b = uniform(rng, 4.5, 7.5), uniform(rng, 0.8, 1.3)
    if rng.random() < 0.3 * ctx.difficulty:
        a, b = a * 0.6, b * 0.8  # atrophic or partly imaged pancreas
    rows.append(slot("pancreas", px, pz, a, b, rot, bend, echo=uniform(rng, -3, 3)))
    rows.append(slot("portal", px, pz + b + 0.35, 0.8 * a, 0.3, rot, bend))
    rows.append(slot("aorta", px + uniform(rng, -1.5, 1.5), pz + b + 2.0, 0.9, 0.85))
    rows.append(slot("bone", px, ctx.depth * uniform(rng, 0.85, 1.0), 2.5, 1.2, 0.0, -0.1))
    if rng.random() < 0.5 * ctx.difficulty:
        rows += organs.bowel(rng, ctx, 1, (0.15, 0.3), gas_p=0.8)  # gas hides part of the gland
    return rows


def view_liver_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Transverse epigastric plane with the left lobe of the liver over the pancreas."""
    return _pancreas_plane(rng, ctx, with_liver=True, with_gb=False)


def view_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Transverse epigastric plane below the liver edge: pancreas, vessels, spine."""
    return organs.bowel(rng, ctx, 1, (0.05, 0.2), 0.3) + _pancreas_plane(rng, ctx, False, False)


def view_liver_gallbladder_pancreas(rng, ctx: ViewContext) -> list[Row]:
    """Oblique plane showing the liver, the gallbladder neck and the pancreatic head."""
    return _pancreas_plane(rng, ctx, with_liver=True, with_gb=True)


def view_bladder(rng, ctx: ViewContext) -> list[Row]:
    """Pelvic view: a large anechoic rounded bladder, uterus/prostate behind, bowel beside."""
    fill = getattr(ctx.patient, "bladder_fill", 1.0) * uniform(rng, 0.7, 1.1)
    cz = ctx.at(uniform(rng, 0.35, 0.5))
    a, b = uniform(rng, 3.5, 5.5) * fill, uniform(rng, 2.5, 4.0) * fill
    rows = organs.bowel(rng, ctx, int(rng.integers(0, 3)), (0.1, 0.5), gas_p=0.4)
    rows.append(slot("pelvic_organ", uniform(rng, -1, 1), cz + b + uniform(rng, 0.5, 2), 3.0, 2.0))
    rows.append(
        slot(
            "bladder",
            uniform(rng, -1.5, 1.5),
            cz,
            a,
            b,
            uniform(rng, -0.2, 0.2),
            uniform(rng, -0.02, 0.03),
            square=uniform(rng, 0.2, 0.7),
        )
    )
    for side in (-1, 1):
        if rng.random() < 0.5:
            bz = ctx.depth * uniform(rng, 0.75, 0.95)
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
        return organs.bowel(rng, ctx, int(rng.integers(3, 6)), gas_p=0.5)
    if kind in ("fluid_loop", "pseudokidney"):
        cz = ctx.at(uniform(rng, 0.35, 0.65))
        cx, rot = uniform(rng, -0.4, 0.4) * ctx.half_width(cz), uniform(rng, -0.8, 0.8)
        a, b = uniform(rng, 2.5, 5.0), uniform(rng, 1.3, 2.8)
        rows = organs.bowel(rng, ctx, int(rng.integers(1, 3)), (0.05, 0.3), gas_p=0.6)
        if kind == "fluid_loop":
            rows.append(
                slot("fluid", cx, cz, a, b, rot, uniform(rng, -0.05, 0.05), uniform(rng, 0, 0.4))
            )
        else:
            rows.append(slot("muscle", cx, cz, a, b, rot, uniform(rng, -0.03, 0.03)))
            rows.append(slot("perirenal_fat", cx, cz, 0.65 * a, 0.35 * b, rot))
        return rows + organs.bowel(rng, ctx, int(rng.integers(0, 2)), (0.7, 0.95))
    if kind == "muscle":
        cz = ctx.at(uniform(rng, 0.3, 0.6))
        rows = [
            slot(
                "muscle",
                uniform(rng, -2, 2),
                cz,
                uniform(rng, 8, 14),
                uniform(rng, 3, 6),
                uniform(rng, -0.4, 0.4),
            )
        ]
        return rows + organs.bowel(rng, ctx, int(rng.integers(0, 3)), (0.6, 0.95))
    if kind == "aorta":
        cz = ctx.at(uniform(rng, 0.5, 0.7))
        rows = organs.bowel(rng, ctx, int(rng.integers(1, 3)), (0.05, 0.35))
        rows.append(
            slot("aorta", uniform(rng, -1, 1), cz, uniform(rng, 7, 10), uniform(rng, 0.8, 1.2))
        )
        rows.append(slot("bone", 0.0, cz + uniform(rng, 2.5, 4), 9.0, 1.0, 0.0, 0.01))
        return rows
    if kind == "stomach":
        cz = ctx.at(uniform(rng, 0.3, 0.5))
        content = "fluid" if rng.random() < 0.5 else "bowel"
        rows = [slot("muscle", uniform(rng, -2, 2), cz, uniform(rng, 4, 6), uniform(rng, 2, 3.5))]
        rows.append(slot(content, rows[0][1], cz, rows[0][3] - 0.5, rows[0][4] - 0.5))
        if rng.random() < 0.5:
            rows.append(slot("gas", rows[0][1], cz - rows[0][4] + 0.9, 2.5, 0.3))
        return rows + organs.bowel(rng, ctx, int(rng.integers(0, 3)), (0.6, 0.95))
    cz = ctx.at(uniform(rng, 0.55, 0.75))
    rows = organs.bowel(rng, ctx, int(rng.integers(1, 4)), (0.05, 0.4))
    rows.append(slot("aorta", uniform(rng, 0.5, 2), cz, 1.0, 0.95))
    rows.append(slot("vein", uniform(rng, -3, -1.5), cz, 1.4, 0.8))
    rows.append(slot("bone", 0.0, cz + uniform(rng, 2.5, 3.5), 3.0, 1.3, 0.0, -0.1))
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
