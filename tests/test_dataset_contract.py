"""The dataset directory contract: writer commits atomically, reader validates on open."""

import json

import numpy as np
import pandas as pd
import pytest

from uslearn.data.dataset import CLASSES, Dataset, DatasetError
from uslearn.data.writer import DatasetWriter


def make_manifest(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        labels = {c: 0 for c in CLASSES}
        labels[CLASSES[i % len(CLASSES)]] = 1
        rows.append(
            {
                "image_id": f"img{i}",
                "patient_id": f"p{i // 4}",
                "exam_id": f"e{i // 2}",
                "split": "labelled",
                **labels,
            }
        )
    return pd.DataFrame(rows)


def write_dataset(out, n=6, size=16):
    images = np.arange(n * size * size, dtype=np.uint64).astype(np.uint8).reshape(n, size, size)
    with DatasetWriter(out, size=size, capacity=n, source="test") as writer:
        writer.write(0, images)
        writer.commit(make_manifest(n))
    return images


def test_written_dataset_reopens_with_same_rows_and_labels(tmp_path):
    images = write_dataset(tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds) == 6 and ds.size == 16
    np.testing.assert_array_equal(np.asarray(ds.images), images)
    assert ds.labels.shape == (6, len(CLASSES)) and ds.labels.dtype == np.int8
    assert list(ds.indices("labelled")) == list(range(6))
    ds.verify_fingerprint()


def test_failed_write_leaves_no_dataset_and_no_temporary(tmp_path):
    with (
        pytest.raises(RuntimeError),
        DatasetWriter(tmp_path / "ds", size=16, capacity=4, source="test") as writer,
    ):
        writer.write(0, np.zeros((2, 16, 16), np.uint8))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_after_commit(tmp_path):
    write_dataset(tmp_path / "ds", n=6)
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(tmp_path / "ds", size=16, capacity=4, source="test")
    with (
        pytest.raises(RuntimeError),
        DatasetWriter(tmp_path / "ds", size=16, capacity=4, source="t", overwrite=True),
    ):
        raise RuntimeError("interrupted")
    assert len(Dataset.open(tmp_path / "ds")) == 6


def test_open_names_the_broken_field(tmp_path):
    write_dataset(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds/meta.json").read_text())
    meta["n_images"] = 7
    (tmp_path / "ds/meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="n_images=7"):
        Dataset.open(tmp_path / "ds")


def test_partly_labelled_row_is_rejected(tmp_path):
    manifest = make_manifest(2)
    manifest.loc[1, "liver"] = -1
    with (
        pytest.raises(DatasetError, match="row 1 is partly labelled"),
        DatasetWriter(tmp_path / "ds", 16, 2, "t") as writer,
    ):
        writer.commit(manifest)


def test_size_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="--size 8 is out of range"):
        DatasetWriter(tmp_path / "ds", size=8, capacity=1, source="t")


def test_sample_verification_reads_little_and_full_verification_catches_every_byte(tmp_path):
    from uslearn.data.dataset import SAMPLE_BLOCK_BYTES, SAMPLE_BLOCKS

    n, size = 600, 256  # a 39 MB store: more than the sampled 256 x 64 KiB
    images = np.zeros((n, size, size), np.uint8)
    with DatasetWriter(tmp_path / "ds", size=size, capacity=n, source="test") as writer:
        writer.write(0, images)
        writer.commit(make_manifest(n))
    ds = Dataset.open(tmp_path / "ds")
    assert "sampled hash" in ds.verify("sample") and "every byte" in ds.verify("full")
    stride = (n * size * size - SAMPLE_BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)
    unsampled = int(stride / 2) + SAMPLE_BLOCK_BYTES  # between the first two sampled blocks
    with open(tmp_path / "ds" / "images.u8", "r+b") as handle:
        handle.seek(unsampled)
        handle.write(b"\x01")
    ds.verify("sample")  # documented: a change outside the sampled blocks is missed...
    with pytest.raises(DatasetError, match="fingerprint .* differs"):
        ds.verify("full")  # ...and found by the full check
    with open(tmp_path / "ds" / "images.u8", "r+b") as handle:
        handle.seek(0)
        handle.write(b"\x01")
    with pytest.raises(DatasetError, match="sampled hash .* differs"):
        ds.verify("sample")


def test_a_dataset_without_a_sample_hash_is_verified_in_full(tmp_path):
    write_dataset(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    del meta["sample_hash"]
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    assert "every byte" in Dataset.open(tmp_path / "ds").verify("sample")
