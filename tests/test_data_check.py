"""``uslearn data check`` / ``split`` / ``gallery`` on small datasets built here."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from uslearn.cli import main
from uslearn.data.check import check_dataset
from uslearn.data.dataset import CLASSES, MANIFEST, SPLITS, Dataset
from uslearn.data.duplicates import cross_split_duplicates
from uslearn.data.gallery import pick_samples
from uslearn.data.writer import DatasetWriter

SIZE = 32


def speckle_images(n, seed=0):
    """Return n different frames: noisy content inside one shared sector, text in a corner."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE), np.uint8)
    images[:, 6:30, 4:28] = rng.integers(30, 220, (n, 24, 24), dtype=np.uint8)
    images[:, 1:3, 1:12] = 255  # the same burned-in text on every frame
    return images


def make_dataset(tmp_path, images=None, n_patients=8, name="ds", edit=None):
    """Write a dataset: 2 exams x 3 images per patient, patients dealt round-robin to splits."""
    rows = []
    for p in range(n_patients):
        for e in range(2):
            for i in range(3):
                labels = {c: 0 for c in CLASSES}
                labels[CLASSES[(p + e + i) % len(CLASSES)]] = 1
                rows.append(
                    {
                        "image_id": f"i{p}-{e}-{i}",
                        "patient_id": f"p{p}",
                        "exam_id": f"p{p}e{e}",
                        "split": SPLITS[p % 4],
                        **labels,
                    }
                )
    manifest = pd.DataFrame(rows)
    if edit is not None:
        edit(manifest)
    images = speckle_images(len(manifest)) if images is None else images
    with DatasetWriter(tmp_path / name, SIZE, len(manifest), "test") as writer:
        writer.write(0, images)
        writer.commit(manifest)
    return Dataset.open(tmp_path / name)


def test_clean_dataset_passes_and_counts_are_reported(tmp_path):
    report = check_dataset(make_dataset(tmp_path))
    assert report.ok, report.problems
    assert report.counts.loc["test", "patients"] == 2 and report.counts.loc["val", "images"] == 12
    assert report.combinations.sum() == 48 and set(report.combinations.index) <= set(CLASSES)
    assert "check passed" in report.format()


def test_patient_in_two_splits_fails(tmp_path):
    def leak(m):
        m.loc[0, "split"] = "test"  # one image of patient p0 (labelled) moved to test

    report = check_dataset(make_dataset(tmp_path, edit=leak))
    assert any("patient(s) appear in more than one split, e.g. p0" in p for p in report.problems)


def test_empty_split_fails(tmp_path):
    def no_val(m):
        m.loc[m["split"] == "val", "split"] = "test"

    report = check_dataset(make_dataset(tmp_path, edit=no_val))
    assert "split 'val' is empty" in report.problems


def test_other_together_with_an_organ_fails(tmp_path):
    def bad(m):
        m.loc[0, ["other", "liver"]] = 1

    report = check_dataset(make_dataset(tmp_path, edit=bad))
    assert any("'other' together with an organ" in p for p in report.problems)


def test_identical_image_across_splits_fails_but_within_a_split_is_fine(tmp_path):
    images = speckle_images(48)
    images[5] = images[0]  # same patient, same split: not a leak
    assert check_dataset(make_dataset(tmp_path, images.copy(), name="a")).ok
    images[6 * 3] = images[0]  # row 18 belongs to patient p3 (test)
    report = check_dataset(make_dataset(tmp_path, images, name="b"))
    assert any(
        "1 byte-identical image pair(s)" in p and "i3-0-0 (test)" in p for p in report.problems
    )


def test_near_duplicate_copy_across_splits_is_found_and_different_frames_are_not(tmp_path):
    images = speckle_images(48)
    rng = np.random.default_rng(1)
    copy = images[0].astype(int) + rng.integers(-3, 4, (SIZE, SIZE)) + 12  # re-encoded, brighter
    images[30] = np.clip(copy, 0, 255).astype(np.uint8)
    splits = np.array([SPLITS[(r // 6) % 4] for r in range(48)])
    identical, near, constant = cross_split_duplicates(images, splits)
    assert identical == [] and near == [(0, 30)] and constant == 0
    assert check_dataset(make_dataset(tmp_path, images)).ok is False


def test_blank_frames_are_not_called_duplicates(tmp_path):
    images = speckle_images(48)
    images[[0, 30]] = 0
    report = check_dataset(make_dataset(tmp_path, images))
    assert report.ok, report.problems
    assert any("2 constant (blank) image(s)" in n for n in report.notes)


def test_changed_store_fails_the_fingerprint(tmp_path):
    ds = make_dataset(tmp_path)
    with open(ds.root / "images.u8", "r+b") as handle:
        handle.write(b"\x07")
    assert any("fingerprint" in p for p in check_dataset(Dataset.open(ds.root)).problems)


def test_check_cli_exits_nonzero_on_problems_and_on_a_missing_class_column(tmp_path, capsys):
    ds = make_dataset(tmp_path)
    assert main(["data", "check", str(ds.root)]) == 0

    def leak(m):
        m.loc[0, "split"] = "test"

    leaky = make_dataset(tmp_path, name="leak", edit=leak)
    assert main(["data", "check", str(leaky.root)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    ds.manifest.drop(columns=["spleen"]).to_parquet(ds.root / MANIFEST)
    assert main(["data", "check", str(ds.root)]) == 2
    assert "missing column(s) ['spleen']" in capsys.readouterr().err


def test_split_cli_reassigns_by_patient_keeps_given_splits_and_refingerprints(tmp_path):
    def given(m):
        m["split_given"] = False
        m.loc[m["patient_id"] == "p1", ["split", "split_given"]] = ["test", True]

    ds = make_dataset(tmp_path, n_patients=12, edit=given)
    assert main(["data", "split", str(ds.root), "--val", "2", "--test", "4", "--seed", "3"]) == 0
    after = Dataset.open(ds.root)
    after.verify("full")
    after.verify("sample")  # the sampled hash covers the manifest: rewritten with it
    assert after.fingerprint != ds.fingerprint
    assert set(after.manifest.loc[after.manifest["patient_id"] == "p1", "split"]) == {"test"}
    assert after.manifest.groupby("split")["exam_id"].nunique().to_dict() == {
        "labelled": 24 - 6,
        "test": 4,
        "val": 2,
    }
    np.testing.assert_array_equal(np.asarray(after.images), np.asarray(ds.images))


def test_gallery_writes_a_png_with_a_row_per_class_and_spreads_splits(tmp_path):
    ds = make_dataset(tmp_path)
    picked = pick_samples(ds, per_class=4)
    assert list(picked) == [*CLASSES, "unlabelled"] and len(picked["unlabelled"]) == 0
    liver_splits = set(ds.manifest["split"].to_numpy()[picked["liver"]])
    assert len(liver_splits) == 4
    assert set(ds.manifest["split"].to_numpy()[pick_samples(ds, 4, split="val")["liver"]]) == {
        "val"
    }
    out = tmp_path / "figs" / "grid.png"
    assert main(["data", "gallery", str(ds.root), "--out", str(out), "--per-class", "4"]) == 0
    with Image.open(out) as image:
        assert image.size[0] > 400 and image.size[1] > 800


def test_gallery_rejects_an_unknown_split(tmp_path):
    with pytest.raises(Exception, match="--split 'train'"):
        pick_samples(make_dataset(tmp_path), 2, split="train")


def test_almost_black_and_flat_frames_are_notes_when_few_and_a_problem_when_many(tmp_path):
    images = speckle_images(48)
    images[0] = images[0] // 20  # the 12-bit-as-16-bit look: maximum 11 of 255
    images[1] = 128  # flat grey
    report = check_dataset(make_dataset(tmp_path, images))
    assert report.ok, report.problems
    assert any("1 of 48 image(s) are almost black" in n and "i0-0-0" in n for n in report.notes)
    assert any("1 of 48 image(s) are flat" in n and "i0-0-1" in n for n in report.notes)
    report = check_dataset(make_dataset(tmp_path, speckle_images(48) // 20, name="dark"))
    assert any("48 of 48 image(s) are almost black" in p for p in report.problems)
