"""``uslearn data import``: folder of frames + labels CSV → dataset directory."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import uslearn.data.importers as importers
from uslearn.cli import main
from uslearn.data.dataset import CLASSES, Dataset, DatasetError
from uslearn.data.images import Preprocess
from uslearn.data.importers import ImportSettings, import_folder
from uslearn.data.pseudonym import pseudonym

SALT = "test-salt"


def frame(seed, h=30, w=40):
    """Return a distinct gray-looking RGB frame (noisy content, small black border)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[3:-3, 3:-3] = rng.integers(20, 230, (h - 6, w - 6, 1), dtype=np.uint8)
    return image


def make_export(root, patients=4, exams=2, per_exam=2, suffix=".png"):
    """Write frames under root/<patient name>/<exam>/ and return the CSV rows (dicts)."""
    rows = []
    for p in range(patients):
        for e in range(exams):
            for i in range(per_exam):
                rel = f"Mueller_Hans_{p}/exam{e}/img{i}{suffix}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame(p * 100 + e * 10 + i)).save(root / rel)
                organ = CLASSES[(p + i) % len(CLASSES)]
                rows.append(
                    {
                        "path": rel,
                        "patient_id": f"PID-{p:04d}",
                        "exam_id": str(e),
                        "labels": organ if p < patients - 1 else "",
                    }
                )
    return rows


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def settings(**kw):
    return ImportSettings(preprocess=Preprocess(size=32), **kw)


def test_listed_frames_import_with_labels_and_pseudonymised_ids(tmp_path):
    rows = make_export(tmp_path / "in")
    rows[0]["split"] = "test"
    csv = write_csv(tmp_path / "labels.csv", rows)
    ds = Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings()))
    assert len(ds) == 16 and ds.size == 32
    assert ds.manifest["patient_id"].nunique() == 4 and ds.manifest["exam_id"].nunique() == 8
    labelled = (ds.labels >= 0).all(axis=1)
    assert labelled.sum() == 12 and (ds.labels[labelled].sum(axis=1) == 1).all()
    # The CSV's split is kept for the whole patient; other rows got a patient-disjoint split.
    first = ds.manifest["patient_id"].iloc[0]
    assert set(ds.manifest.loc[ds.manifest["patient_id"] == first, "split"]) == {"test"}
    assert bool(ds.manifest["split_given"].iloc[0]) and not ds.manifest["split_given"].iloc[1]
    assert (ds.manifest.groupby("patient_id")["split"].nunique() == 1).all()
    text = ds.manifest.to_csv() + (ds.root / "meta.json").read_text()
    text += (ds.root / "import_report.json").read_text()
    for secret in ("PID-0", "Mueller", "Hans"):
        assert secret not in text
    assert "source_path" not in ds.manifest
    report = json.loads((ds.root / "import_report.json").read_text())
    assert report["imported"] == 16 and report["labelled"] == 12 and report["rejected"] == {}
    assert pd.read_csv(tmp_path / "ds.rejected.csv").empty


def test_same_salt_gives_same_ids_and_locate_finds_the_files_again(tmp_path, capsys):
    csv = write_csv(tmp_path / "labels.csv", make_export(tmp_path / "in"))
    a = Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "a", SALT, settings()))
    b = Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "b", SALT, settings()))
    assert a.manifest["image_id"].equals(b.manifest["image_id"])
    first = a.manifest["image_id"].iloc[0]
    argv = ["data", "locate", "--images", str(tmp_path / "in"), "--salt", SALT, first]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{first}\tMueller_Hans_0/exam0/img0.png\n"
    assert main([*argv[:-2], "other-salt", first]) == 1  # another salt finds nothing
    c = Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "c", "other", settings()))
    assert not set(a.manifest["patient_id"]) & set(c.manifest["patient_id"])


def test_unlisted_frames_only_with_the_flag_and_then_unlabelled_with_sibling_ids(tmp_path):
    rows = make_export(tmp_path / "in")
    csv = write_csv(tmp_path / "labels.csv", rows[1:])  # img0 of patient 0 exam 0 unlisted
    ds = Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "a", SALT, settings()))
    assert len(ds) == 15
    path = import_folder(
        tmp_path / "in", csv, tmp_path / "b", SALT, settings(), include_unlisted=True
    )
    ds = Dataset.open(path)
    assert len(ds) == 16
    extra = ds.manifest.iloc[-1]
    sibling = ds.manifest.iloc[0]  # img1 of the same exam folder
    assert (extra["patient_id"], extra["exam_id"]) == (sibling["patient_id"], sibling["exam_id"])
    assert (ds.labels[-1] == -1).all()
    report = json.loads((path / "import_report.json").read_text())
    assert report["unlisted_included"] == 1


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_jpeg_bmp_and_tiff_frames_import(tmp_path, suffix):
    csv = write_csv(tmp_path / "l.csv", make_export(tmp_path / "in", patients=1, suffix=suffix))
    assert (
        len(Dataset.open(import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings())))
        == 4
    )


def break_files(root, rows):
    """Corrupt one frame, truncate another, and list a path that does not exist."""
    (root / rows[1]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = (root / rows[2]["path"]).read_bytes()
    (root / rows[2]["path"]).write_bytes(data[: len(data) // 2])
    rows.append({**rows[3], "path": "Mueller_Hans_0/exam0/gone.png"})
    return rows


def test_bad_frame_stops_the_import_with_its_path_and_leaves_nothing(tmp_path):
    rows = break_files(tmp_path / "in", make_export(tmp_path / "in"))
    csv = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(
        DatasetError, match=r"Mueller_Hans_0/exam0/img1.png: unreadable: .*--skip-bad"
    ):
        import_folder(tmp_path / "in", csv, tmp_path / "out" / "ds", SALT, settings())
    assert list((tmp_path / "out").iterdir()) == []


def test_skip_bad_imports_the_rest_and_lists_the_rejected(tmp_path):
    rows = break_files(tmp_path / "in", make_export(tmp_path / "in"))
    csv = write_csv(tmp_path / "labels.csv", rows)
    path = import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings(skip_bad=True))
    assert len(Dataset.open(path)) == 16 + 1 - 3
    rejected = pd.read_csv(tmp_path / "ds.rejected.csv")
    assert sorted(rejected["reason"]) == ["missing", "unreadable", "unreadable"]
    assert pseudonym("image", "Mueller_Hans_0/exam0/gone.png", SALT) in set(rejected["image_id"])
    assert rejected["csv_line"].notna().all()  # each was listed in the CSV
    # Persisted, so no path nor name (the terminal got them).
    assert "Mueller" not in (tmp_path / "ds.rejected.csv").read_text()
    report = json.loads((path / "import_report.json").read_text())
    assert report["rejected"] == {"missing": 1, "unreadable": 2} and report["imported"] == 14


def test_interrupted_import_leaves_no_half_dataset(tmp_path, monkeypatch):
    csv = write_csv(tmp_path / "labels.csv", make_export(tmp_path / "in"))
    calls = []
    real = importers.decode_file

    def interrupt(path, options):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(path, options)

    monkeypatch.setattr(importers, "decode_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        import_folder(tmp_path / "in", csv, tmp_path / "out" / "ds", SALT, settings())
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", make_export(tmp_path / "in"))
    import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings())
    with pytest.raises(DatasetError, match="already exists"):
        import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings())
    import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings(overwrite=True))


def test_empty_input_folder_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    csv = write_csv(
        tmp_path / "labels.csv",
        [{"path": "a.png", "patient_id": "p", "exam_id": "e", "labels": ""}],
    )
    with pytest.raises(DatasetError, match="no image files found"):
        import_folder(tmp_path / "in", csv, tmp_path / "ds", SALT, settings())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "8", "--insecure-default-salt"], "--size 8 is out of range; expected 16..1024"),
        (["--size", "5000", "--insecure-default-salt"], "--size 5000 is out of range"),
        ([], "no salt for pseudonymising"),
    ],
)
def test_cli_refuses_bad_size_and_a_missing_salt(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("USLEARN_SALT", raising=False)
    csv = write_csv(tmp_path / "labels.csv", make_export(tmp_path / "in", patients=1))
    argv = ["data", "import", "--images", str(tmp_path / "in"), "--labels", str(csv)]
    assert main([*argv, "--out", str(tmp_path / "ds"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
