"""The phantom database: contract, determinism, splits, label frequencies, co-occurrence, CLI."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import uslearn.data
from uslearn.data.dataset import CLASSES, Dataset, DatasetError
from uslearn.data.writer import DatasetWriter
from uslearn.phantom import PRESETS, TRUTH, ensure_phantom, generate_phantom
from uslearn.phantom.cli import register
from uslearn.phantom.exams import EXAM_TYPES, assign_splits, plan_exams
from uslearn.phantom.labels import add_label_noise, labels_from_visible

# The paper's test set (Sec. 3.1): labels per class and images.
PAPER_TEST_LABELS = {
    "liver": 555,
    "gallbladder": 115,
    "other": 315,
    "kidney": 316,
    "pancreas": 72,
    "spleen": 135,
    "bladder": 58,
}
PAPER_TEST_IMAGES = 1242


def make_phantom(root, name: str = "tiny", **kwargs):
    """Generate a phantom under ``root`` and return it opened (tiny preset unless told)."""
    kwargs.setdefault("preset", "tiny")
    return Dataset.open(generate_phantom(root / name, **kwargs))


def truth_of(dataset: Dataset) -> pd.DataFrame:
    """Return the phantom's noise-free labels of every row (unlabelled rows included)."""
    return pd.read_parquet(dataset.root / TRUTH)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    # Enough exams for frequencies (~3 000 frames); 16 px keeps it cheap, labels do not
    # depend on the size.
    return make_phantom(tmp_path_factory.mktemp("many"), "many", exams=240, size=16)


def test_tiny_preset_meets_the_dataset_contract(tiny):
    frame = tiny.manifest
    assert tiny.size == PRESETS["tiny"].size
    assert frame["exam_id"].nunique() == PRESETS["tiny"].exams
    assert {"view", "vendor"} <= set(frame.columns)
    assert frame["patient_id"].str.fullmatch(r"P\d{6}").all()
    assert frame["exam_id"].str.fullmatch(r"E\d{6}").all()
    labelled = frame["split"] != "unlabelled"
    assert (tiny.labels[labelled.to_numpy()] >= 0).all()
    assert (tiny.labels[~labelled.to_numpy()] == -1).all()
    tiny.verify_fingerprint()


def test_tiny_preset_images_are_fan_shaped_grey_frames(tiny):
    images = np.asarray(tiny.images, dtype=np.float32)
    assert 20 < images.mean() < 120
    # The centre column under the probe is imaged, the bottom corners are outside the sector.
    size = tiny.size
    assert images[:, size // 2, size // 2].mean() > 20
    assert images[:, -2:, :2].mean() < 10


def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path):
    one = make_phantom(tmp_path, "one", workers=1)
    two = make_phantom(tmp_path, "two", workers=2)
    for name in ("images.u8", "manifest.parquet", TRUTH):
        assert (one.root / name).read_bytes() == (two.root / name).read_bytes()
    assert one.fingerprint == two.fingerprint


def test_another_seed_gives_another_database(tmp_path, tiny):
    other = make_phantom(tmp_path, "seed1", seed=1)
    assert other.fingerprint != tiny.fingerprint
    assert not np.array_equal(np.asarray(other.images[:10]), np.asarray(tiny.images[:10]))


def test_labels_do_not_depend_on_the_image_size(tmp_path, tiny):
    bigger = make_phantom(tmp_path, "bigger", size=48)
    assert bigger.size == 48
    pd.testing.assert_frame_equal(
        bigger.manifest[list(CLASSES)], tiny.manifest[list(CLASSES)], check_dtype=True
    )


def test_splits_are_patient_disjoint_with_the_preset_exam_counts(tiny):
    frame = tiny.manifest
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    assert (splits_per_patient == 1).all()
    exams = frame.groupby("split")["exam_id"].nunique()
    spec = PRESETS["tiny"]
    assert (exams["labelled"], exams["val"], exams["test"]) == (spec.labelled, spec.val, spec.test)
    assert exams["unlabelled"] == spec.exams - spec.labelled - spec.val - spec.test


def test_paper_plan_has_the_papers_exam_image_patient_and_split_counts():
    spec = PRESETS["paper"]
    exams = plan_exams(0, spec.exams)
    n_images = sum(len(e.views) for e in exams)
    assert abs(n_images - 89_830) / 89_830 < 0.02
    assert len({e.patient.index for e in exams}) == 5_788
    splits = assign_splits(exams, {"labelled": 224, "val": 77, "test": 101}, seed=0)
    counts = pd.Series(splits).value_counts()
    assert counts.to_dict() == {"unlabelled": 6_549, "labelled": 224, "test": 101, "val": 77}
    patients = pd.DataFrame({"p": [e.patient.index for e in exams], "s": splits})
    assert (patients.groupby("p")["s"].nunique() == 1).all()
    per_split = patients.groupby("s")["p"].nunique()
    assert per_split["labelled"] >= 220 and per_split["test"] >= 99  # ~1 exam per patient


def test_demo_preset_keeps_enough_val_and_test_exams():
    spec = PRESETS["demo"]
    assert spec.val >= 20 and spec.test >= 30
    assert 300 <= spec.exams <= 400 and spec.size == 64


def test_exam_types_have_the_expected_lengths(many):
    truth = truth_of(many)
    lengths = truth.groupby(many.manifest["exam_id"]).size()
    types = truth.groupby(many.manifest["exam_id"])["exam_type"].first()
    mean = lengths.groupby(types).mean()
    assert 11 <= mean["abdominal"] <= 18
    assert mean["bladder"] < mean["abdominal"] and mean["renal"] < mean["abdominal"]
    assert abs(lengths.mean() - 89_830 / 6_951) < 1.5
    assert set(EXAM_TYPES) == {"abdominal", "renal", "liver", "bladder"}


def test_label_shares_match_the_papers_test_set(many):
    labels = truth_of(many)[list(CLASSES)].to_numpy()
    shares = labels.sum(axis=0) / labels.sum()
    total = sum(PAPER_TEST_LABELS.values())
    for j, name in enumerate(CLASSES):
        target = PAPER_TEST_LABELS[name] / total
        assert abs(shares[j] - target) <= max(0.03, 0.3 * target), (name, shares[j], target)
    per_image = labels.sum() / len(labels)
    assert abs(per_image - total / PAPER_TEST_IMAGES) < 0.1


def test_other_is_never_combined_with_an_organ(many):
    labels = truth_of(many)[list(CLASSES)].to_numpy()
    other = labels[:, CLASSES.index("other")] == 1
    organs = np.delete(labels, CLASSES.index("other"), axis=1)
    assert np.array_equal(other, organs.sum(axis=1) == 0)


def test_views_combine_organs_as_standard_planes_do(many):
    labels = truth_of(many)[list(CLASSES)]
    with_gb = labels[labels["gallbladder"] == 1]
    assert with_gb["liver"].mean() > 0.95  # the gallbladder is seen through the liver
    with_bladder = labels[labels["bladder"] == 1]
    assert with_bladder.drop(columns="bladder").sum(axis=1).eq(0).mean() > 0.95
    with_spleen = labels[labels["spleen"] == 1]
    assert with_spleen["liver"].mean() < 0.05  # opposite sides of the abdomen
    assert 0.2 < with_spleen["kidney"].mean() < 0.8  # splenorenal views and spleen alone
    with_kidney = labels[labels["kidney"] == 1]
    assert 0.15 < with_kidney["liver"].mean() < 0.6  # Morison's pouch and flank views


def test_abdominal_exams_show_most_organs(many):
    truth = truth_of(many)
    abdominal = truth[truth["exam_type"] == "abdominal"]
    organs_seen = abdominal.groupby(many.manifest["exam_id"])[list(CLASSES)].max().sum(axis=1)
    assert organs_seen.mean() >= 4.5


def test_some_labels_are_hard_because_an_organ_barely_shows(many):
    truth = truth_of(many)
    visible = truth[[c for c in truth.columns if c.startswith("visible_")]].to_numpy()
    marginal = ((visible > 0.005) & (visible < 0.03)).any(axis=1).mean()
    assert 0.02 < marginal < 0.3


def test_higher_difficulty_gives_more_marginal_organs_and_poorer_frames(tmp_path):
    easy = make_phantom(tmp_path, "easy", exams=60, size=16, difficulty=0.0)
    hard = make_phantom(tmp_path, "hard", exams=60, size=16, difficulty=2.0)

    def marginal(data):
        truth = truth_of(data)
        visible = truth[[c for c in truth.columns if c.startswith("visible_")]].to_numpy()
        return ((visible > 0.002) & (visible < 0.03)).any(axis=1).mean()

    assert marginal(hard) > 1.5 * marginal(easy)
    assert easy.manifest["view"].equals(hard.manifest["view"])  # same exams, harder frames


def test_label_noise_touches_labelled_and_val_rows_only(tmp_path):
    noisy = make_phantom(tmp_path, "noisy", label_noise=0.3)
    truth = truth_of(noisy)[list(CLASSES)].to_numpy()
    split = noisy.manifest["split"].to_numpy()
    changed = (noisy.labels != truth).any(axis=1)
    assert not changed[split == "test"].any()
    annotated = np.isin(split, ("labelled", "val"))
    assert 0.15 < changed[annotated].mean() < 0.4
    other = noisy.labels[annotated][:, CLASSES.index("other")] == 1
    assert np.array_equal(other, np.delete(noisy.labels[annotated], 2, axis=1).sum(axis=1) == 0)


def test_add_label_noise_misses_or_adds_one_tag_per_noisy_row():
    labels = labels_from_visible(np.random.default_rng(0).uniform(0, 0.05, size=(500, 6)))
    noisy = add_label_noise(labels, 1.0, np.random.default_rng(1))
    flips = (noisy != labels).sum(axis=1)
    # One tag missed or added, plus `other` switching when the organ set empties or fills.
    assert set(np.unique(flips)) <= {0, 1, 2}
    assert (flips > 0).mean() > 0.8


def test_ensure_phantom_generates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", PRESETS["tiny"].__class__(10, 16, 2, 2, 2, "test"))
    first = ensure_phantom(tmp_path / "tiny", preset="tiny", seed=0)
    created = first.meta["created"]
    again = ensure_phantom(tmp_path / "tiny", preset="tiny", seed=0)
    assert again.meta["created"] == created and again.fingerprint == first.fingerprint
    reseeded = ensure_phantom(tmp_path / "tiny", preset="tiny", seed=1)
    assert reseeded.meta["phantom"]["seed"] == 1


def test_ensure_phantom_never_replaces_a_dataset_that_is_not_a_phantom(tmp_path):
    path = tmp_path / "hospital"
    frame = pd.DataFrame(
        {"image_id": ["a"], "patient_id": ["p"], "exam_id": ["e"], "split": ["test"]}
        | {c: [1 if c == "liver" else 0] for c in CLASSES}
    )
    with DatasetWriter(path, size=16, capacity=1, source="import") as writer:
        writer.write(0, np.zeros((1, 16, 16), np.uint8))
        writer.commit(frame)
    with pytest.raises(DatasetError, match="not a phantom"):
        ensure_phantom(path, preset="tiny")
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a phantom"):
        ensure_phantom(stranger, preset="tiny")
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_bad_arguments_are_user_errors_naming_the_option(tmp_path, tiny):
    with pytest.raises(DatasetError, match="preset"):
        generate_phantom(tmp_path / "x", preset="huge")
    with pytest.raises(DatasetError, match="--exams"):
        generate_phantom(tmp_path / "x", preset="tiny", exams=3)
    with pytest.raises(DatasetError, match="--seed"):
        generate_phantom(tmp_path / "x", preset="tiny", seed=-1)
    with pytest.raises(DatasetError, match="--difficulty"):
        generate_phantom(tmp_path / "x", preset="tiny", difficulty=-1)
    with pytest.raises(DatasetError, match="already exists"):
        generate_phantom(tiny.root, preset="tiny")


def test_cli_writes_a_phantom_and_prints_a_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["phantom", "--out", str(out), "--preset", "tiny", "--exams", "10", "--size", "16"]
    )
    assert args.func(args) == 0
    assert Dataset.open(out).manifest["exam_id"].nunique() == 10
    assert "label shares" in capsys.readouterr().out


def test_uslearn_data_phantom_runs_from_the_top_level_cli(tmp_path, capsys):
    from uslearn.cli import main

    out = tmp_path / "cli_main"
    argv = ["data", "phantom", "--preset", "tiny", "--exams", "10", "--size", "16", "--out"]
    assert main([*argv, str(out)]) == 0
    assert Dataset.open(out).meta["phantom"]["exams"] == 10
    assert f"{out}: " in capsys.readouterr().out


def test_the_data_room_never_imports_the_phantom():
    # The phantom is a leaf over the dataset contract: uslearn.data must work without it.
    data_room = Path(uslearn.data.__file__).parent
    offenders = []
    for path in sorted(data_room.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = ["uslearn", *path.relative_to(data_room.parent).parent.parts]
                base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
                module = ".".join(part for part in (base, node.module or "") if part)
                names = [module, *(f"{module}.{a.name}" for a in node.names)]
            if any(n == "uslearn.phantom" or n.startswith("uslearn.phantom.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"uslearn/data imports uslearn/phantom at {offenders}"
