"""Image formation of the phantom: shapes, enhancement, shadows, fluid vs liver, overlays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from uslearn.phantom.anatomy import (
    MONOMIALS,
    ORGANS,
    SLOT_FIELDS,
    monomials,
    pack_slots,
    shape_polynomials,
    slot,
)
from uslearn.phantom.bmode import render
from uslearn.phantom.exams import PARAMS, P, plan_exams
from uslearn.phantom.generate import build_scenes
from uslearn.phantom.overlay import Layout, text_bitmap

QUIET = Layout(text_right=False, ruler_left=False, brightness=0.0, grey_bar=False, logo=False)


def settings(**overrides) -> np.ndarray:
    """Return one frame's settings: a mid-range convex probe, 16 cm deep, no noise or haze."""
    values = dict(
        radius=5.0,
        depth=16.0,
        half_angle=np.deg2rad(35),
        freq=3.5,
        focus=8.0,
        gain=30.0,
        dyn_range=60.0,
        gamma=1.0,
        tgc_err=0.0,
        tgc_mid=0.0,
        tgc_deep=0.0,
        noise_db=-80.0,
        skin=0.15,
        fat=1.0,
        muscle=1.0,
        fat_echo=0.0,
        haze=0.0,
        fan_w=0.8,
        fan_h=0.9,
        top=0.05,
        xc=0.5,
        smooth=0.0,
        contrast=1.0,
        mirror=1.0,
    )
    values.update(overrides)
    return np.array([values[name] for name in PARAMS], dtype=np.float32)


def draw(scenes: list[list[tuple]], size: int = 96, seed: int = 0, **overrides):
    """Render hand-made scenes (lists of slot rows) with identical settings and speckle seed."""
    slots = np.stack([pack_slots(rows) for rows in scenes])
    params = np.stack([settings(**overrides)] * len(scenes))
    out = [
        render(
            slots[i : i + 1],
            params[i : i + 1],
            [(QUIET, [])],
            size,
            torch.Generator().manual_seed(seed),
            True,
        )
        for i in range(len(scenes))
    ]
    return np.concatenate([o.images for o in out]).astype(np.float32), out


def region(size: int, rows: tuple[float, float], cols: tuple[float, float]):
    """Return the index of a box given as fractions of the frame."""
    r0, r1 = (int(f * size) for f in rows)
    c0, c1 = (int(f * size) for f in cols)
    return np.s_[r0:r1, c0:c1]


def test_shape_polynomials_match_the_direct_shape_formula():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        square = rng.uniform(0, 0.8) if rng.random() < 0.3 else 0.0
        bend = 0.0 if square else rng.uniform(-0.08, 0.08)
        taper = 0.0 if square else rng.uniform(-0.5, 0.5)
        rows.append(
            slot(
                "liver",
                *rng.uniform(-6, 6, 1),
                *rng.uniform(2, 15, 1),
                *rng.uniform(0.5, 8, 2),
                rng.uniform(-1.5, 1.5),
                bend,
                taper,
                square,
            )  # fmt: skip
        )
    f = {name: np.array(rows)[:, i] for i, name in enumerate(SLOT_FIELDS)}
    x = torch.tensor(rng.uniform(-12, 12, size=(1, 1, 500)), dtype=torch.float32)
    z = torch.tensor(rng.uniform(0, 20, size=(1, 1, 500)), dtype=torch.float32)
    coef = shape_polynomials(np.array(rows)[None])[0]  # (K, M)
    q_fast = monomials(x, z)[0].T.double().numpy() @ coef.T  # (N, K)
    xs, zs = x.numpy().ravel()[:, None], z.numpy().ravel()[:, None]
    dx, dz = xs - f["cx"], zs - f["cz"]
    u = dx * np.cos(f["rot"]) + dz * np.sin(f["rot"])
    v = dz * np.cos(f["rot"]) - dx * np.sin(f["rot"])
    un, vn = u / f["a"], v / f["b"]
    plain = un**2 + ((v - f["bend"] * u**2) / f["b"] * (1 - f["taper"] * un)) ** 2
    boxy = (1 - f["square"]) * (un**2 + vn**2) + f["square"] * (un**4 + vn**4)
    q_ref = np.where(f["square"] > 0, boxy, plain)
    near = np.abs(q_ref) < 4  # where the mask ramp can see it (float32 features)
    assert np.allclose(q_fast[near], q_ref[near], rtol=2e-3, atol=2e-3)
    assert len(MONOMIALS) == 28


def test_fluid_leaves_posterior_enhancement_below_it():
    bladder = [slot("bladder", 0.0, 8.0, 3.0, 2.0)]
    images, _ = draw([bladder, []], size=96)
    below = region(96, (0.72, 0.85), (0.45, 0.55))
    assert images[0][below].mean() > 1.3 * images[1][below].mean()


def test_bone_and_gas_leave_shadows_below_them():
    rib = [slot("bone", 0.0, 3.0, 1.0, 0.4)]
    gas = [slot("gas", 0.0, 3.0, 1.0, 0.3)]
    images, _ = draw([rib, gas, []], size=96)
    below = region(96, (0.5, 0.8), (0.47, 0.53))
    plain = images[2][below].mean()
    assert images[0][below].mean() < 0.1 * plain
    assert images[1][below].mean() < 0.1 * plain


def test_fluid_organs_are_darker_than_liver_inside_their_masks():
    exams = plan_exams(3, 12)
    views = ("liver_gallbladder", "bladder", "liver")
    chosen = [dataclasses.replace(e, views=views) for e in exams]
    slots, params, overlays = build_scenes(chosen, 1.0)
    out = render(slots, params, overlays, 64, torch.Generator().manual_seed(0), with_masks=True)
    liver_c, gb_c, bladder_c = (ORGANS.index(o) for o in ("liver", "gallbladder", "bladder"))
    liver_means, gb_means, bladder_means = [], [], []
    # One pixel in from the boundary: the wall (bright capsule) belongs to the boundary.
    inner = binary_erosion(out.masks, structure=np.ones((1, 1, 3, 3), bool))
    for image, mask in zip(out.images.astype(np.float32), inner):
        if mask[liver_c].sum() > 20:
            liver_means.append(image[mask[liver_c]].mean())
        if mask[gb_c].sum() > 10:
            gb_means.append(image[mask[gb_c]].mean())
        if mask[bladder_c].sum() > 10:
            bladder_means.append(image[mask[bladder_c]].mean())
    assert len(gb_means) >= 6 and len(bladder_means) >= 6
    liver = np.median(liver_means)
    assert np.median(gb_means) < 0.5 * liver
    assert np.median(bladder_means) < 0.5 * liver


def test_kidney_sinus_is_brighter_than_the_renal_cortex():
    kidney = [
        slot("kidney_cortex", 0.0, 9.0, 5.5, 2.6),
        slot("kidney_sinus", 0.0, 9.0, 3.5, 1.1),
    ]
    images, _ = draw([kidney], size=128, seed=1)
    sinus = region(128, (0.55, 0.6), (0.47, 0.53))
    cortex = region(128, (0.45, 0.48), (0.47, 0.53))
    assert images[0][sinus].mean() > 1.3 * images[0][cortex].mean()


def test_outside_the_sector_is_black_without_overlay():
    images, _ = draw([[slot("liver", 0.0, 9.0, 14.0, 8.0)]], size=64)
    assert images[0][-3:, :3].max() == 0 and images[0][-3:, -3:].max() == 0
    assert images[0][32, 32] > 0


@pytest.mark.parametrize("text", ["C5-1 ABD", "4.0MHZ D16CM"])
def test_overlay_text_is_burned_into_the_frame(text):
    bitmap = text_bitmap(text)
    assert bitmap.shape == (5, 4 * len(text)) and bitmap.max() == 1.0
    slots = np.stack([pack_slots([])])
    params = np.stack([settings(top=0.15)])
    layout = dataclasses.replace(QUIET, brightness=1.0)
    out = render(slots, params, [(layout, [text])], 128, torch.Generator().manual_seed(0))
    corner = out.images[0, 2:7, 2 : 2 + 4 * len(text)]
    assert (corner > 200).sum() == int(bitmap.sum())


def test_rendering_is_deterministic_for_a_seed():
    scene = [[slot("spleen", 1.0, 7.0, 6.0, 2.0, 0.3, -0.05)]]
    first, _ = draw(scene, seed=5)
    again, _ = draw(scene, seed=5)
    other, _ = draw(scene, seed=6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert P["depth"] == PARAMS.index("depth")
