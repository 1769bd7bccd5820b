"""Batched augmentations: shapes, determinism from a generator, per-image variety, op semantics."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from uslearn import augment

SIZE = 32


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make_batch(b: int = 8, side: int = 40, seed: int = 0) -> torch.Tensor:
    """Return a uint8 (b, side, side) batch of smooth random images (a bright blob on noise)."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, side)
    blob = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) * 3)
    images = 0.6 * blob + 0.4 * torch.rand(b, side, side, generator=g)
    return (images * 255).to(torch.uint8)


PIPELINES = {
    "weak": lambda x, g: augment.weak_view(x, SIZE, g),
    "strong": lambda x, g: augment.strong_view(x, SIZE, g),
    "pica_a": lambda x, g: augment.pica_views(x, SIZE, g)[0],
    "pica_b": lambda x, g: augment.pica_views(x, SIZE, g)[1],
    "pica_a_full": lambda x, g: augment.pica_views(x, SIZE, g, first_view="full")[0],
}


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("as_float", [False, True])
def test_views_are_float_batches_in_unit_range(name, as_float):
    x = make_batch()
    if as_float:
        x = x.unsqueeze(1).float() / 255
    view = PIPELINES[name](x, gen())
    assert view.shape == (8, 1, SIZE, SIZE) and view.dtype == torch.float32
    assert view.min() >= 0 and view.max() <= 1 and torch.isfinite(view).all()


@pytest.mark.parametrize("name", PIPELINES)
def test_views_replay_from_a_seeded_generator_and_change_with_the_seed(name):
    x = make_batch()
    first, again = PIPELINES[name](x, gen(5)), PIPELINES[name](x, gen(5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, PIPELINES[name](x, gen(6)))


@pytest.mark.parametrize("name", PIPELINES)
def test_each_image_of_a_batch_gets_its_own_random_parameters(name):
    x = make_batch(b=1).expand(16, -1, -1).contiguous()  # one image, 16 times
    view = PIPELINES[name](x, gen(1)).flatten(1)
    distinct = {tuple(row.tolist()) for row in view}
    assert len(distinct) >= 14


@pytest.mark.parametrize("first_view", ["reduced", "full"])
def test_pica_views_of_the_same_batch_differ(first_view):
    view_a, view_b = augment.pica_views(make_batch(), SIZE, gen(2), first_view=first_view)
    assert (view_a - view_b).abs().mean(dim=(1, 2, 3)).min() > 0.01


def test_the_reduced_pica_view_is_a_random_crop_of_four_fifths_without_flip_or_intensity_change():
    # A horizontal ramp 0..1 over the 40 px side: a crop of 80 % of the side keeps a rising
    # slope (never mirrored) over 80 % of the range, and the brightness is untouched.
    side = 40
    ramp = torch.linspace(0, 1, side).expand(64, 1, side, side).contiguous()
    view = augment.reduced_view(ramp, SIZE, gen(7))[:, 0]
    row = view[:, SIZE // 2]
    span = row[:, -2] - row[:, 1]  # two pixels in from each edge: no bilinear border
    assert (span > 0).all()
    assert span.mean().item() == pytest.approx(0.8 * (SIZE - 3) / SIZE, rel=0.05)
    # Where each crop starts along the ramp (pixel 1 lies 1.5 px of 0.8/SIZE into the crop):
    # anywhere in [0, 0.2], different per image.
    starts = row[:, 1] - 1.5 * 0.8 / SIZE
    assert starts.min() >= -0.01 and starts.max() <= 0.21 and starts.std() > 0.03
    gray = torch.full((4, 1, side, side), 0.37)
    view = augment.reduced_view(gray, SIZE, gen(8))
    torch.testing.assert_close(view, torch.full_like(view, 0.37))


def test_an_unknown_first_pica_view_is_rejected():
    with pytest.raises(ValueError, match="first_view"):
        augment.pica_views(make_batch(), SIZE, gen(), first_view="strong")


def test_to_input_only_scales_at_the_stored_size_and_resizes_otherwise():
    x = make_batch(side=SIZE)
    torch.testing.assert_close(augment.to_input(x, SIZE), x.unsqueeze(1).float() / 255)
    resized = augment.to_input(make_batch(side=64), SIZE)
    assert resized.shape == (8, 1, SIZE, SIZE)


def test_input_of_the_wrong_shape_or_type_is_rejected():
    for x in (
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 8, 8),
        torch.zeros(2, 3, 8, 8),
    ):
        with pytest.raises(ValueError):
            augment.weak_view(x, 8, gen())


def test_weak_view_only_flips_and_translates_by_at_most_an_eighth():
    white = torch.full((64, SIZE, SIZE), 255, dtype=torch.uint8)
    view = augment.weak_view(white, SIZE, gen(3))[:, 0]
    # Black (padding) covers at most 12.5 % of the side (+1 px of bilinear edge) on each axis.
    black_rows = (view < 0.5).all(dim=2).sum(dim=1)
    black_cols = (view < 0.5).all(dim=1).sum(dim=1)
    assert black_rows.max() <= 0.125 * SIZE + 1 and black_cols.max() <= 0.125 * SIZE + 1
    interior = view[:, 6:-6, 6:-6]
    torch.testing.assert_close(interior, torch.ones_like(interior))
    # An asymmetric image shows the flip: about half of the batch is mirrored.
    ramp = torch.linspace(0, 255, SIZE).expand(64, SIZE, SIZE).to(torch.uint8)
    slope = augment.weak_view(ramp, SIZE, gen(4))[:, 0, SIZE // 2, 8:-8].diff(dim=1).mean(dim=1)
    assert 16 <= int((slope < 0).sum()) <= 48


def test_strong_view_starts_from_the_weak_views_flip_and_translation():
    x = make_batch()
    plain = augment.strong_view(x, SIZE, gen(7), n_ops=0, cutout=0.0)
    torch.testing.assert_close(plain, augment.weak_view(x, SIZE, gen(7)))


def test_strong_view_cuts_out_a_gray_square_of_the_given_fraction():
    black = torch.zeros(16, SIZE, SIZE, dtype=torch.uint8)
    view = augment.strong_view(black, SIZE, gen(8), n_ops=0, cutout=0.5)[:, 0]
    gray = view == augment.CUTOUT_FILL
    assert gray.any(dim=(1, 2)).all()
    side = gray.sum(dim=(1, 2)).max().sqrt()
    assert side == pytest.approx(0.5 * SIZE, abs=1)
    rows, cols = gray.any(dim=2), gray.any(dim=1)
    assert (gray.sum(dim=(1, 2)) == rows.sum(1) * cols.sum(1)).all()  # a rectangle


def test_strong_view_rejects_out_of_range_settings():
    with pytest.raises(ValueError):
        augment.strong_view(make_batch(), SIZE, gen(), magnitude=11)


@pytest.mark.parametrize(
    "op", ["brightness", "contrast", "sharpness", "solarize", "equalize", "autocontrast"]
)
def test_intensity_ops_match_torchvision_per_image(op):
    x = make_batch(b=4).unsqueeze(1).float() / 255
    m = torch.tensor([0.0, 0.3, 0.7, 1.0])
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    got = augment._intensity(op, x, m, sign)
    for i in range(4):
        factor = float(1 + sign[i] * m[i] * augment.STRONG_ENHANCE)
        reference = {
            "brightness": lambda img, f=factor: TF.adjust_brightness(img, f),
            "contrast": lambda img, f=factor: TF.adjust_contrast(img, f),
            "sharpness": lambda img, f=factor: TF.adjust_sharpness(img, f),
            "solarize": lambda img, i=i: TF.solarize(img, float(1 - m[i])),
            "equalize": TF.equalize,
            "autocontrast": TF.autocontrast,
        }[op](x[i])
        torch.testing.assert_close(got[i], reference, atol=1e-5, rtol=0)


def test_posterize_keeps_eight_down_to_four_bits():
    x = make_batch(b=3)
    m = torch.tensor([0.0, 0.5, 1.0])
    got = augment._intensity("posterize", x.unsqueeze(1).float() / 255, m, torch.ones(3))
    for i, bits in enumerate([8, 6, 4]):
        expected = TF.posterize(x[i : i + 1], bits).float() / 255
        torch.testing.assert_close(got[i], expected, atol=1e-6, rtol=0)


def test_geometric_ops_are_rotations_shears_and_translations():
    m, sign = torch.tensor([1.0]), torch.tensor([1.0])
    rot = augment._geometric("rotate", m, sign)[0]
    torch.testing.assert_close(rot[:2, :2] @ rot[:2, :2].T, torch.eye(2))
    assert torch.rad2deg(torch.atan2(rot[1, 0], rot[0, 0])) == pytest.approx(30.0)
    assert augment._geometric("shear_x", m, sign)[0, 0, 1] == pytest.approx(0.3)
    assert augment._geometric("translate_y", m, -sign)[0, 1, 2] == pytest.approx(-0.6)


@pytest.mark.parametrize("name", PIPELINES)
def test_cpu_subset_path_equals_the_whole_batch_path_used_on_gpu(name, monkeypatch):
    x = make_batch(b=12)
    subset = PIPELINES[name](x, gen(9))
    monkeypatch.setattr(augment, "_index_subsets", lambda device: False)
    whole = PIPELINES[name](x, gen(9))
    torch.testing.assert_close(subset, whole, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PIPELINES)
def test_views_run_on_cuda_and_replay_from_a_cuda_generator(name):
    x = make_batch().cuda()
    first = PIPELINES[name](x, gen(5, "cuda"))
    assert first.device.type == "cuda"
    torch.testing.assert_close(first, PIPELINES[name](x, gen(5, "cuda")), rtol=0, atol=0)


def test_affine_grid_equals_torch():
    theta = torch.randn(5, 2, 3, generator=gen(10))
    expected = torch.nn.functional.affine_grid(theta, [5, 1, 24, 24], align_corners=False)
    torch.testing.assert_close(augment._affine_grid(theta, 24), expected)


def test_autocontrast_leaves_flat_images_unchanged():
    flat = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(
        augment._intensity("autocontrast", flat, torch.ones(2), torch.ones(2)), flat
    )


@pytest.mark.gpu
def test_views_on_cuda_never_synchronise_with_the_host():
    x = make_batch().cuda()
    g = gen(5, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for fn in PIPELINES.values():
            fn(x, g)
        augment.to_input(x, SIZE)
    finally:
        torch.cuda.set_sync_debug_mode("default")
