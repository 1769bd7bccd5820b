"""Patient-disjoint split assignment and nested label fractions."""

import warnings

import numpy as np
import pandas as pd
import pytest

from uslearn.data.dataset import CLASSES, Dataset, DatasetError
from uslearn.data.splits import assign_splits, labelled_rows, labelled_subset, split_counts
from uslearn.data.writer import DatasetWriter


def make_manifest(n_patients=30, exams_per_patient=2, images_per_exam=3, labelled_patients=20):
    """Return a manifest: the first ``labelled_patients`` patients are labelled (one organ each)."""
    rows = []
    for p in range(n_patients):
        for e in range(exams_per_patient):
            for i in range(images_per_exam):
                labels = {c: -1 for c in CLASSES}
                if p < labelled_patients:
                    labels = {c: 0 for c in CLASSES}
                    labels[CLASSES[(p + i) % len(CLASSES)]] = 1
                rows.append(
                    {
                        "image_id": f"i{p}-{e}-{i}",
                        "patient_id": f"p{p}",
                        "exam_id": f"p{p}e{e}",
                        "split": "unlabelled",
                        **labels,
                    }
                )
    return pd.DataFrame(rows)


def write(manifest, out, size=16):
    with DatasetWriter(out, size=size, capacity=len(manifest), source="test") as writer:
        writer.write(0, np.zeros((len(manifest), size, size), np.uint8))
        writer.commit(manifest)
    return Dataset.open(out)


def test_splits_are_patient_disjoint_and_unlabelled_patients_stay_unlabelled():
    out = assign_splits(make_manifest(), val=0.2, test=0.25, seed=0)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    unlabelled_patients = {f"p{p}" for p in range(20, 30)}
    assert set(out.loc[out["split"] != "unlabelled", "patient_id"]).isdisjoint(unlabelled_patients)
    exams = out.groupby("split")["exam_id"].nunique()
    assert exams["test"] == 10 and exams["val"] == 8  # ceil(0.25*40), ceil(0.2*40) exams
    assert exams["labelled"] == 40 - 18


def test_split_counts_are_exact_and_seeds_draw_different_patients():
    a = assign_splits(make_manifest(), val=4, test=6, seed=0)
    b = assign_splits(make_manifest(), val=4, test=6, seed=1)
    assert a.groupby("split")["exam_id"].nunique()["test"] == 6
    assert not a["split"].equals(b["split"])
    assert a["split"].equals(assign_splits(make_manifest(), val=4, test=6, seed=0)["split"])


def test_given_splits_are_kept_for_the_whole_patient():
    manifest = make_manifest()
    manifest["split_given"] = False
    manifest.loc[0, ["split", "split_given"]] = ["test", True]  # one row of patient p0
    out = assign_splits(manifest, val=2, test=2, seed=0)
    assert set(out.loc[out["patient_id"] == "p0", "split"]) == {"test"}
    assert out.groupby("split")["exam_id"].nunique()["test"] == 2


def test_patient_given_two_splits_is_an_error():
    manifest = make_manifest()
    manifest["split_given"] = False
    manifest.loc[[0, 1], "split_given"] = True
    manifest.loc[[0, 1], "split"] = ["test", "val"]
    with pytest.raises(DatasetError, match="patient p0 is given two splits"):
        assign_splits(manifest, seed=0)


def test_exam_count_beyond_the_labelled_exams_is_an_error():
    with pytest.raises(DatasetError, match="--test asks for 99"):
        assign_splits(make_manifest(), test=99, seed=0)


def test_label_fractions_are_nested_drawn_by_exam_and_sized(tmp_path):
    manifest = assign_splits(make_manifest(n_patients=40, labelled_patients=40), seed=0)
    ds = write(manifest, tmp_path / "ds")
    full = labelled_subset(ds, 1.0, seed=3)
    np.testing.assert_array_equal(full, labelled_rows(ds, "labelled"))
    previous = set()
    for fraction in (0.1, 0.2, 0.5, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subset = labelled_subset(ds, fraction, seed=3)
        assert previous <= set(subset.tolist())
        previous = set(subset.tolist())
        exams = ds.manifest["exam_id"].to_numpy()
        whole = ds.manifest.index[ds.manifest["exam_id"].isin(set(exams[subset]))]
        assert set(whole) == set(subset.tolist())  # whole exams only
        assert fraction * len(full) <= len(subset) < fraction * len(full) + 3
    assert not np.array_equal(labelled_subset(ds, 0.2, 3), labelled_subset(ds, 0.2, 4))


def test_fraction_without_a_class_positive_warns_with_the_class_name(tmp_path):
    manifest = make_manifest(n_patients=4, labelled_patients=4)
    manifest["split"] = "labelled"
    manifest[list(CLASSES)] = 0
    manifest["liver"] = 1
    ds = write(manifest, tmp_path / "ds")
    with pytest.warns(UserWarning, match="gallbladder, other, kidney, pancreas, spleen, bladder"):
        labelled_subset(ds, 0.5, seed=0)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_fraction_out_of_range_is_an_error(tmp_path, fraction):
    ds = write(assign_splits(make_manifest(), seed=0), tmp_path / "ds")
    with pytest.raises(DatasetError, match="not in"):
        labelled_subset(ds, fraction, seed=0)


def test_split_counts_list_every_split_even_when_empty():
    table = split_counts(make_manifest())
    assert list(table.index) == ["labelled", "unlabelled", "val", "test"]
    assert table.loc["unlabelled", "images"] == 180 and table.loc["test", "images"] == 0
