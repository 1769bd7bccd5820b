"""DICOM import: photometric interpretations, ultrasound regions, Doppler, bad files, privacy."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import HTJ2K, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from uslearn.data.dataset import CLASSES, Dataset, DatasetError
from uslearn.data.dicom import import_dicom, pick_frames
from uslearn.data.images import Preprocess
from uslearn.data.importers import ImportSettings

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SALT = "test-salt"


def smooth_rgb(h=30, w=40, seed=0):
    """Return a smooth gray RGB frame (JPEG-friendly), values 40..200."""
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.linspace(40, 120, h), np.linspace(0, 80, w)) + rng.integers(0, 5)
    return np.repeat(base[..., None], 3, axis=2).astype(np.uint8)


def dicom(pixels=None, photometric="MONOCHROME2", patient="PAT-001", study=None, **extra):
    """Return a DICOM ultrasound dataset with identifying header fields and ``pixels``."""
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = US_IMAGE
    ds.PatientID = patient
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC123"
    ds.StudyInstanceUID = study or generate_uid()
    ds.Manufacturer = "VendorA"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, 8)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def region(x0, y0, x1, y1, spatial_format=1):
    item = DicomDataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    return item


def save(ds, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def settings(**kw):
    pre = Preprocess(size=32, crop=kw.pop("crop", "auto"))
    return ImportSettings(preprocess=pre, workers=kw.pop("workers", 1), **kw)


def run(root, out, labels=None, **kw):
    max_frames = kw.pop("max_frames", 0)
    path = import_dicom(root, out, SALT, settings(**kw), labels=labels, max_frames=max_frames)
    return Dataset.open(path)


def one(tmp_path, ds, **kw):
    save(ds, tmp_path / "in" / "IM0")
    return run(tmp_path / "in", tmp_path / "ds", crop="none", **kw)


def test_monochrome1_is_inverted_so_zero_is_white(tmp_path):
    pixels = np.zeros((32, 32), np.uint8)
    pixels[:, 16:] = 255
    stored = one(tmp_path, dicom(pixels, "MONOCHROME1")).images[0]
    assert stored[:, :16].min() == 255 and stored[:, 16:].max() == 0


def test_rgb_and_ybr_full_give_the_same_gray(tmp_path):
    rgb = smooth_rgb(32, 32)
    save(dicom(rgb, "RGB"), tmp_path / "in" / "rgb")
    save(dicom(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL"), tmp_path / "in" / "ybr")
    images = np.asarray(run(tmp_path / "in", tmp_path / "ds", crop="none").images, dtype=int)
    assert np.abs(images[0] - images[1]).max() <= 2
    assert np.abs(images[0] - rgb[..., 0]).max() <= 2


def test_jpeg_baseline_ybr_full_422_decodes(tmp_path):
    rgb = smooth_rgb(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95)
    ds = dicom()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 32, 32, 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    stored = one(tmp_path, ds).images[0].astype(int)
    assert np.abs(stored - rgb[..., 0]).mean() < 4


def test_palette_colour_goes_through_the_lookup_table(tmp_path):
    indices = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    ds = dicom(indices, "PALETTE COLOR")
    lut = ((255 - np.arange(256)) * 257).astype("<u2").tobytes()  # an inverting gray palette
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut)
    stored = one(tmp_path, ds).images[0].astype(int)
    assert np.abs(stored - (255 - indices)).max() <= 1


def test_ultrasound_region_crops_away_burned_in_text(tmp_path):
    pixels = np.zeros((30, 40), np.uint8)
    pixels[10:30, 10:40] = 100  # the image region
    pixels[0:5, 0:40] = 255  # a text banner above it
    ds = dicom(pixels, SequenceOfUltrasoundRegions=[region(0, 0, 5, 5, 0), region(10, 10, 39, 29)])
    save(ds, tmp_path / "in" / "a")
    stored = run(tmp_path / "in", tmp_path / "ds").images[0]
    assert stored.max() == 100  # only the region, scaled up, no text


def test_multi_frame_files_give_one_row_per_frame_and_max_frames_samples_evenly(tmp_path):
    frames = np.stack([np.full((20, 20), v, np.uint8) for v in (10, 50, 90, 130, 170)])
    save(dicom(frames), tmp_path / "in" / "cine")
    ds = run(tmp_path / "in", tmp_path / "ds", crop="none")
    assert len(ds) == 5 and ds.manifest["exam_id"].nunique() == 1
    assert ds.manifest["image_id"].str.endswith(("-f0", "-f4")).sum() == 2
    ds = run(tmp_path / "in", tmp_path / "ds3", crop="none", max_frames=3)
    assert sorted(int(ds.images[i].max()) for i in range(3)) == [10, 90, 170]
    assert pick_frames(10, 0) == tuple(range(10)) and pick_frames(10, 2) == (0, 9)


def test_colour_doppler_frames_are_rejected_and_counted_without_stopping(tmp_path):
    gray = smooth_rgb(32, 32)
    doppler = gray.copy()
    doppler[8:20, 8:20] = (200, 20, 20)
    save(dicom(gray, "RGB"), tmp_path / "in" / "bmode")
    save(dicom(doppler, "RGB"), tmp_path / "in" / "doppler")
    ds = run(tmp_path / "in", tmp_path / "ds")
    assert len(ds) == 1
    report = json.loads((ds.root / "import_report.json").read_text())
    assert report["rejected"] == {"doppler": 1}
    rejected = pd.read_csv(tmp_path / "ds.rejected.csv")
    assert rejected["reason"].tolist() == ["doppler"]
    assert rejected["image_id"].iloc[0] not in set(ds.manifest["image_id"])


def test_file_without_pixel_data_stops_the_import_unless_skip_bad(tmp_path):
    save(dicom(np.full((20, 20), 80, np.uint8)), tmp_path / "in" / "image")
    save(dicom(None), tmp_path / "in" / "report")
    with pytest.raises(DatasetError, match="report: no_pixel_data: no pixel data.*--skip-bad"):
        run(tmp_path / "in", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    ds = run(tmp_path / "in", tmp_path / "ds", skip_bad=True)
    assert len(ds) == 1
    assert json.loads((ds.root / "import_report.json").read_text())["rejected"] == {
        "no_pixel_data": 1
    }


def test_compressed_syntax_without_decoder_names_the_package_to_install(tmp_path):
    ds = dicom(np.full((20, 20), 80, np.uint8))
    ds.file_meta.TransferSyntaxUID = HTJ2K  # no HTJ2K decoder is installed here
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    save(ds, tmp_path / "in" / "htj2k")
    with pytest.raises(
        DatasetError, match="no_decoder.*High-Throughput JPEG 2000.*pylibjpeg-openjpeg"
    ):
        run(tmp_path / "in", tmp_path / "ds")


def test_non_dicom_files_are_listed_but_do_not_stop_the_import(tmp_path):
    save(dicom(np.full((20, 20), 80, np.uint8)), tmp_path / "in" / "a")
    (tmp_path / "in" / "README.TXT").write_text("export notes")
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"skipped by name")
    ds = run(tmp_path / "in", tmp_path / "ds")
    assert len(ds) == 1
    report = json.loads((ds.root / "import_report.json").read_text())
    assert report["rejected"] == {"not_dicom": 1} and report["files_found"] == 2


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_a_legacy_file_without_preamble_or_file_meta_is_read(tmp_path, implicit_vr):
    """Files written before DICOM Part 10 (no preamble, no 'DICM', no file meta) are imported
    like any other, in either VR encoding; a text file next to them stays not_dicom."""
    pixels = np.zeros((24, 24), np.uint8)
    pixels[:, 12:] = 200
    ds = dicom(pixels)
    del ds.file_meta
    path = tmp_path / "in" / "LEGACY"
    path.parent.mkdir(parents=True)
    ds.save_as(path, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    (tmp_path / "in" / "notes").write_text("not an image")
    imported = run(tmp_path / "in", tmp_path / "ds", crop="none")
    assert len(imported) == 1
    stored = np.asarray(imported.images[0], dtype=int)
    assert stored[:, :12].max() <= 5 and stored[:, 20:].min() >= 195  # resized to 32 px
    report = json.loads((imported.root / "import_report.json").read_text())
    assert report["rejected"] == {"not_dicom": 1}


def test_no_name_birth_date_accession_or_raw_id_is_stored(tmp_path):
    study = generate_uid()
    for i in range(2):
        save(dicom(np.full((20, 20), 60 + i, np.uint8), study=study), tmp_path / "in" / f"im{i}")
    ds = run(tmp_path / "in", tmp_path / "ds")
    assert ds.manifest["patient_id"].nunique() == 1 and ds.manifest["exam_id"].nunique() == 1
    assert ds.manifest["vendor"].tolist() == ["VendorA", "VendorA"]
    text = ds.manifest.astype(str).to_csv() + "".join(
        p.read_text() for p in ds.root.iterdir() if p.suffix == ".json"
    )
    raw = b"".join(p.read_bytes() for p in ds.root.iterdir())
    for secret in ("PAT-001", "Doe", "Jane", "19700101", "ACC123", study):
        assert secret not in text and secret.encode() not in raw


def test_labels_csv_by_path_or_uid_with_frames(tmp_path):
    frames = np.stack([np.full((20, 20), v, np.uint8) for v in (10, 90)])
    single = dicom(np.full((20, 20), 50, np.uint8))
    save(dicom(frames), tmp_path / "in" / "cine")
    save(single, tmp_path / "in" / "sub" / "still")
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,sop_instance_uid,frame,labels\n"
        f"cine,,1,kidney\nsub/still,{single.SOPInstanceUID},,liver;spleen\n"
    )
    ds = run(tmp_path / "in", tmp_path / "ds", labels=csv)
    labels = {int(ds.images[i].max()): ds.labels[i].tolist() for i in range(len(ds))}
    assert labels[10] == [-1] * len(CLASSES)
    assert labels[90][CLASSES.index("kidney")] == 1
    assert labels[50][CLASSES.index("liver")] == labels[50][CLASSES.index("spleen")] == 1
    csv.write_text("sop_instance_uid,labels\n1.2.3.4,liver\n")
    with pytest.raises(DatasetError, match="line 2: an image not found"):
        run(tmp_path / "in", tmp_path / "ds2", labels=csv)


@pytest.mark.slow
def test_parallel_import_equals_serial_import(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 255, (24, 30), dtype=np.uint8)
        save(
            dicom(pixels, patient=f"P{i % 7}", study=f"1.2.{i % 11}"), tmp_path / "in" / f"{i:03d}"
        )
    serial = run(tmp_path / "in", tmp_path / "a", workers=1)
    parallel = run(tmp_path / "in", tmp_path / "b", workers=2)
    assert serial.fingerprint == parallel.fingerprint
