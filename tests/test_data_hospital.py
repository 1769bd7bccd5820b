"""A hospital-like export (PNG frames + DICOM + CSV, with every bad case) through the CLI:
import, import-dicom, split, check, then exam sampling and batch loading."""

import json
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2K, ExplicitVRLittleEndian, generate_uid

from uslearn.cli import main
from uslearn.data.dataset import Dataset
from uslearn.data.loader import load_batch
from uslearn.data.sampler import ExamBatchSampler
from uslearn.data.splits import labelled_subset

SALT = ["--salt", "hospital-secret", "--size", "32"]
ORGAN_SETS = [
    "liver",
    "liver;kidney",
    "gallbladder;liver",
    "other",
    "spleen;kidney",
    "bladder",
    "pancreas;liver",
]


def pacs_frame(seed, colour_patch=False):
    """Return a 30 x 40 RGB freeze frame: gray sector content, yellow burned-in text, maybe flow."""
    rng = np.random.default_rng(seed)
    image = np.zeros((30, 40, 3), np.uint8)
    image[6:28, 6:36] = rng.integers(20, 230, (22, 30, 1), dtype=np.uint8)
    image[0:3, 1:14] = (255, 255, 0)
    if colour_patch:
        image[10:20, 12:26] = (210, 30, 40)
    return image


def make_png_export(root):
    """Write 10 patients x 2 exams x 3 frames; patients 0-7 tagged, 8-9 not. Return CSV rows."""
    rows = []
    for p in range(10):
        for e in range(2):
            for i in range(3):
                rel = f"export/{p:02d}/{e}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pacs_frame(1000 * p + 10 * e + i)).save(root / rel)
                labels = ORGAN_SETS[(p + e + i) % len(ORGAN_SETS)] if p < 8 else ""
                rows.append(
                    {
                        "path": rel,
                        "patient_id": f"IPP{p:06d}",
                        "exam_id": f"ACC{p}{e}",
                        "labels": labels,
                    }
                )
    # The bad cases of a real export: a Doppler frame, a corrupt file, a truncated JPEG and a
    # CSV row whose file was never exported.
    Image.fromarray(pacs_frame(7, colour_patch=True)).save(root / "export/00/0/doppler.png")
    (root / "export/01/0/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray(pacs_frame(8)).save(root / "export/02/0/cut.jpg")
    data = (root / "export/02/0/cut.jpg").read_bytes()
    (root / "export/02/0/cut.jpg").write_bytes(data[: len(data) // 3])
    for rel, owner in (("doppler.png", 0), ("corrupt.png", 1), ("cut.jpg", 2), ("missing.png", 3)):
        folder = f"export/{owner:02d}/0/"
        rows.append(
            {
                "path": folder + rel,
                "patient_id": f"IPP{owner:06d}",
                "exam_id": f"ACC{owner}0",
                "labels": "liver",
            }
        )
    return rows


def dicom_file(path, pixels, photometric, patient, study, **extra):
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, "Martin^Claire", "19580214"
    ds.StudyInstanceUID, ds.Manufacturer = study, "VendorB"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, 8)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in extra.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicom_export(root):
    """8 patients, one study each: a single RGB frame and a 2-frame cine; plus the bad files."""
    rows = []
    for p in range(8):
        study = generate_uid()
        folder = root / f"PA{p:03d}" / "ST000"
        dicom_file(folder / "IM000", pacs_frame(50 + p), "RGB", f"IPP{p:06d}", study)
        cine = np.stack([pacs_frame(70 + p)[..., 0], pacs_frame(90 + p)[..., 0]])
        dicom_file(folder / "IM001", cine, "MONOCHROME2", f"IPP{p:06d}", study)
        if p < 6:
            rows.append({"path": f"PA{p:03d}/ST000/IM000", "labels": ORGAN_SETS[p]})
            rows.append({"path": f"PA{p:03d}/ST000/IM001", "labels": ORGAN_SETS[p + 1]})
    study = generate_uid()
    dicom_file(
        root / "PA000/ST000/IM002", pacs_frame(5, colour_patch=True), "RGB", "IPP000000", study
    )
    dicom_file(root / "PA000/ST000/SR000", None, "", "IPP000000", study)  # a report, no pixels
    jp2 = dicom_file(
        root / "PA001/ST000/IM009", pacs_frame(6)[..., 0], "MONOCHROME2", "IPP000001", study
    )
    ds = pydicom.dcmread(jp2)
    ds.file_meta.TransferSyntaxUID = HTJ2K
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(32)])
    ds.save_as(jp2, enforce_file_format=True)
    (root / "README.TXT").write_text("exported by PACS")
    return rows


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("hospital")
    png_rows = make_png_export(root / "png")
    pd.DataFrame(png_rows).to_csv(root / "png_labels.csv", index=False)
    dicom_rows = make_dicom_export(root / "dicom")
    pd.DataFrame(dicom_rows).to_csv(root / "dicom_labels.csv", index=False)
    return root


def test_png_export_imports_with_skip_bad_then_splits_checks_and_samples(export, tmp_path, capsys):
    base = [
        "data",
        "import",
        "--images",
        str(export / "png"),
        "--labels",
        str(export / "png_labels.csv"),
    ]
    out = str(tmp_path / "us")
    assert main([*base, "--out", out, *SALT, "--workers", "1"]) == 2
    assert "export/01/0/corrupt.png: unreadable" in capsys.readouterr().err
    assert not (tmp_path / "us").exists()

    assert main([*base, "--out", out, *SALT, "--workers", "2", "--skip-bad"]) == 0
    report = json.loads((tmp_path / "us" / "import_report.json").read_text())
    assert report["rejected"] == {"doppler": 1, "missing": 1, "unreadable": 2}
    assert report["imported"] == 60 and report["labelled"] == 48
    assert len(pd.read_csv(tmp_path / "us.rejected.csv")) == 4

    assert main(["data", "split", out, "--val", "4", "--test", "4", "--seed", "1"]) == 0
    assert main(["data", "check", out]) == 0, capsys.readouterr().out
    ds = Dataset.open(out)
    exams = ds.manifest.groupby("split")["exam_id"].nunique()
    assert exams["val"] == 4 and exams["test"] == 4 and exams["unlabelled"] == 4
    text = ds.manifest.to_csv() + "".join(p.read_text() for p in ds.root.glob("*.json"))
    assert "IPP0" not in text and "ACC" not in text

    # Exam sampling for two DDP ranks, then one batch from the memory map.
    rows = ds.indices("labelled")
    exam_ids = ds.manifest["exam_id"].to_numpy()[rows]
    ranks = [ExamBatchSampler(exam_ids, rows, 2, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    batch = next(iter(ranks[0]))
    assert len(set(ds.manifest["exam_id"].to_numpy()[batch])) == 2
    assert tuple(load_batch(ds.images, batch).shape) == (len(batch), 32, 32)
    with pytest.warns(UserWarning, match="no positive example"):
        small = labelled_subset(ds, 0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert set(small) <= set(labelled_subset(ds, 0.5, seed=0))


def test_dicom_export_imports_with_skip_bad_and_hides_identities(export, tmp_path, capsys):
    base = [
        "data",
        "import-dicom",
        "--dicom",
        str(export / "dicom"),
        "--labels",
        str(export / "dicom_labels.csv"),
    ]
    out = str(tmp_path / "dcm")
    assert main([*base, "--out", out, *SALT, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no_pixel_data" in err or "pylibjpeg-openjpeg" in err
    assert main([*base, "--out", out, *SALT, "--workers", "1", "--skip-bad"]) == 0
    report = json.loads((tmp_path / "dcm" / "import_report.json").read_text())
    assert report["rejected"] == {"doppler": 1, "no_decoder": 1, "no_pixel_data": 1, "not_dicom": 1}
    ds = Dataset.open(out)
    assert len(ds) == 8 * 3 and ds.manifest["patient_id"].nunique() == 8
    assert ((ds.labels >= 0).all(axis=1)).sum() == 6 * 3
    rejected = pd.read_csv(tmp_path / "dcm.rejected.csv")
    assert (
        "pylibjpeg-openjpeg" in rejected.loc[rejected["reason"] == "no_decoder", "detail"].iloc[0]
    )
    raw = b"".join(p.read_bytes() for p in ds.root.iterdir())
    for secret in (b"IPP0", b"Martin", b"Claire", b"19580214"):
        assert secret not in raw


def two_splits_for_one_patient(rows):
    for row in rows:
        row["split"] = ""
    rows[0]["split"], rows[1]["split"] = "val", "test"  # both rows of patient IPP000000


CSV_ERRORS = [
    (lambda rows: rows[0].update(labels="liver;hepar"), "line 2: unknown organ name 'hepar'"),
    (lambda rows: rows.append(dict(rows[0])), "appears on lines [2, "),
    (lambda rows: rows[0].update(labels="other;kidney"), "line 2: 'other' means no organ"),
    (two_splits_for_one_patient, "one patient is given two splits (line 2: val, line 3: test)"),
]


@pytest.mark.parametrize("edit, message", CSV_ERRORS)
def test_csv_mistakes_stop_the_import_with_the_line(export, tmp_path, capsys, edit, message):
    rows = pd.read_csv(export / "png_labels.csv", keep_default_na=False, dtype=str).to_dict(
        "records"
    )
    edit(rows)
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    argv = [
        "data",
        "import",
        "--images",
        str(export / "png"),
        "--labels",
        str(tmp_path / "labels.csv"),
    ]
    assert main([*argv, "--out", str(tmp_path / "ds"), *SALT]) == 2
    assert message in capsys.readouterr().err


def test_non_utf8_csv_stops_the_import(export, tmp_path, capsys):
    text = (export / "png_labels.csv").read_text().replace("IPP000000", "Lefèvre")
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    argv = [
        "data",
        "import",
        "--images",
        str(export / "png"),
        "--labels",
        str(tmp_path / "latin1.csv"),
    ]
    assert main([*argv, "--out", str(tmp_path / "ds"), *SALT]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
