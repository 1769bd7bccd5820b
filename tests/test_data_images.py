"""Image preprocessing rules, labels CSV parsing and pseudonyms (pure functions, no dataset)."""

import numpy as np
import pytest
from PIL import Image

from uslearn.data.dataset import CLASSES, DatasetError
from uslearn.data.images import (
    ImageRejected,
    Preprocess,
    auto_region,
    check_dimensions,
    colour_fraction,
    letterbox,
    prepare,
    read_image_file,
    significant_bits,
    to_gray,
    to_uint8,
)
from uslearn.data.labels_csv import parse_labels, read_labels_csv
from uslearn.data.pseudonym import INSECURE_DEFAULT_SALT, pseudonym, resolve_salt
from uslearn.errors import UserError


def sector_frame(h=120, w=160, text=True, seed=0):
    """Return an RGB frame: a bright noisy sector on black, white 'text' in the top-left corner."""
    rng = np.random.default_rng(seed)
    frame = np.zeros((h, w, 3), np.uint8)
    frame[30:110, 50:140] = rng.integers(60, 200, (80, 90, 1), dtype=np.uint8)
    frame[60:75, 80:100] = 0  # dark fluid inside the sector must not split it
    if text:
        frame[2:8, 2:20] = 255
    return frame


def test_letterbox_keeps_aspect_and_centres_on_black():
    gray = np.full((30, 40), 200, np.uint8)
    out = letterbox(gray, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert (rows[0], rows[-1]) == (4, 27)  # 40 -> 32 wide, 30 -> 24 high, 4 rows of padding
    assert out[:4].max() == 0 and out[28:].max() == 0 and out[10, 0] == 200


def test_letterbox_upscales_small_images():
    assert letterbox(np.full((8, 4), 9, np.uint8), 32)[16, 16] == 9


def test_gray_uses_bt601_luma_and_keeps_gray_input():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0], rgb[0, 1, 1], rgb[0, 2, 2] = 255, 255, 255
    assert to_gray(rgb).tolist() == [[76, 150, 29]]
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert to_gray(gray) is gray


def test_deeper_samples_scale_down_by_bits_stored():
    assert to_uint8(np.array([0, 4095], np.uint16), bits=12).tolist() == [0, 255]
    assert to_uint8(np.array([0, 65535], np.uint16)).tolist() == [0, 255]
    assert to_uint8(np.array([-128, 127], np.int8).astype(np.int16), bits=8).tolist() == [0, 255]


def test_sixteen_bit_png_is_scaled_by_its_sbit_else_by_the_depth_its_maximum_needs(tmp_path):
    from PIL import PngImagePlugin

    twelve_bit = np.linspace(0, 2990, 32 * 32).astype(np.uint16).reshape(32, 32)
    Image.fromarray(twelve_bit).save(tmp_path / "range.png")
    assert read_image_file(tmp_path / "range.png").max() == 2990 >> 4  # 186, not 11
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([14]))
    Image.fromarray(twelve_bit).save(tmp_path / "sbit.png", pnginfo=info)
    assert read_image_file(tmp_path / "sbit.png").max() == 2990 >> 6
    assert significant_bits(np.array([200], np.uint16)) == 8
    assert significant_bits(np.array([1023], np.uint16)) == 10
    assert significant_bits(np.array([40000], np.uint16)) == 16


def test_images_too_large_or_too_small_are_rejected_before_storing(tmp_path):
    Image.new("L", (1, 1), 128).save(tmp_path / "dot.png")
    with pytest.raises(ImageRejected, match="too_small"):
        prepare(read_image_file(tmp_path / "dot.png"), Preprocess(size=32))
    with pytest.raises(ImageRejected, match="too_large"):
        check_dimensions(8000, 8000)
    check_dimensions(7000, 7000)


def test_auto_region_finds_the_sector_and_drops_burned_in_text():
    top, bottom, left, right = auto_region(to_gray(sector_frame()))
    assert top <= 30 and bottom >= 110 and left <= 50 and right >= 140
    assert top > 8 or left > 20  # the text block is outside


def test_auto_region_of_a_blank_frame_is_the_whole_frame():
    assert auto_region(np.zeros((40, 50), np.uint8)) == (0, 40, 0, 50)


def test_colour_doppler_frame_is_rejected_and_gray_rgb_is_kept():
    frame = sector_frame()
    options = Preprocess(size=32, crop="auto")
    assert prepare(frame, options).shape == (32, 32)
    frame[40:60, 60:90] = (220, 30, 20)  # a red flow patch inside the sector
    assert colour_fraction(frame, 64) > 0.01
    with pytest.raises(ImageRejected) as err:
        prepare(frame, options)
    assert err.value.reason == "doppler"
    assert prepare(frame, Preprocess(size=32, doppler_fraction=1.0)).shape == (32, 32)


def test_coloured_text_outside_the_region_does_not_count_as_doppler():
    frame = sector_frame()
    frame[0:20, 0:40] = (255, 255, 0)  # a big yellow logo outside the sector
    assert prepare(frame, Preprocess(size=32, crop="auto")).shape == (32, 32)


def test_crop_auto_removes_text_from_the_stored_image():
    gray = to_gray(sector_frame())
    cropped = prepare(gray, Preprocess(size=64, crop="auto"))
    uncropped = prepare(gray, Preprocess(size=64, crop="none"))
    # The text is 255; the sector's noise stays below 200 even after resampling.
    assert uncropped.max() > 210 and cropped.max() < 200


def test_truncated_and_corrupt_files_are_unreadable_and_absent_files_missing(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40), np.uint8)).save(
        tmp_path / "ok.png"
    )
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    assert read_image_file(tmp_path / "ok.png").shape == (30, 40)
    for name, reason in (
        ("cut.png", "unreadable"),
        ("junk.png", "unreadable"),
        ("no.png", "missing"),
    ):
        with pytest.raises(ImageRejected) as err:
            read_image_file(tmp_path / name)
        assert err.value.reason == reason


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16", "1"])
def test_every_common_pil_mode_decodes_to_uint8(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    image = base.convert("L").convert(mode) if mode in ("I;16", "1") else base.convert(mode)
    image.save(tmp_path / "x.png")
    array = read_image_file(tmp_path / "x.png")
    assert array.dtype == np.uint8 and array.shape[:2] == (30, 40)


def test_labels_parse_case_insensitive_with_spaces():
    vector = parse_labels(" Liver ;KIDNEY; ", "x")
    assert vector.tolist() == [1, 0, 0, 1, 0, 0, 0]
    assert parse_labels("", "x").tolist() == [-1] * len(CLASSES)
    assert parse_labels("other", "x")[CLASSES.index("other")] == 1


def test_unknown_organ_lists_the_allowed_names():
    with pytest.raises(
        DatasetError, match="unknown organ name 'hepar'; allowed: liver, gallbladder"
    ):
        parse_labels("hepar", "f.csv, line 3")


def test_other_together_with_an_organ_is_an_error():
    with pytest.raises(DatasetError, match="'other' .* cannot go with liver"):
        parse_labels("other;liver", "f.csv, line 3")


def write_csv(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_errors_name_the_line(tmp_path):
    header = "path,patient_id,exam_id,labels\n"
    cases = [
        (
            header + "a.png,p1,e1,liver\nb.png,p1,e1,spleen\nc.png,p2,e2,hepar\n",
            "line 4: unknown organ",
        ),
        (header + "a.png,p1,e1,liver\na.png,p1,e1,kidney\n", r"appears on lines \[2, 3\]"),
        (header + "a.png,p1,e1,other;kidney\n", "line 2: 'other'"),
        ("path,patient_id,labels\na.png,p1,liver\n", "missing column.*exam_id"),
        (header.replace("labels", "labels,split") + "a.png,p1,e1,liver,train\n", "split 'train'"),
        (header + "/abs/a.png,p1,e1,liver\n", "must be relative"),
        (
            header.replace("labels", "labels,split") + "a.png,p1,e1,liver,val\nb.png,p1,e2,,test\n",
            "line 2: val, line 3: test",
        ),
    ]
    for text, message in cases:
        with pytest.raises(DatasetError, match=message):
            read_labels_csv(write_csv(tmp_path, text))


def test_non_utf8_csv_is_an_error_with_the_line_and_a_fix(tmp_path):
    path = write_csv(tmp_path, "path,patient_id,exam_id,labels\nb.png,Müller,e1,liver\n", "latin-1")
    with pytest.raises(DatasetError, match="line 2 is not UTF-8.*CSV UTF-8"):
        read_labels_csv(path)


def test_csv_with_bom_and_windows_paths_reads(tmp_path):
    path = write_csv(tmp_path, "\ufeffPath,Patient_ID,Exam_ID,Labels\r\nsub\\a.png,p1,e1,Liver\r\n")
    table = read_labels_csv(path)
    assert table["key"].tolist() == ["sub/a.png"] and table["line"].tolist() == [2]


def test_pseudonyms_are_stable_per_salt_and_hide_the_value():
    a = pseudonym("patient", "12345", "s1")
    assert a == pseudonym("patient", "12345", "s1") and a.startswith("p-") and "12345" not in a
    assert a != pseudonym("patient", "12345", "s2") != pseudonym("exam", "12345", "s1")


def test_salt_is_required_unless_the_insecure_default_is_asked_for(monkeypatch):
    monkeypatch.delenv("USLEARN_SALT", raising=False)
    with pytest.raises(UserError, match="--salt"):
        resolve_salt(None)
    assert resolve_salt(None, insecure_default=True) == INSECURE_DEFAULT_SALT
    monkeypatch.setenv("USLEARN_SALT", "from-env")
    assert resolve_salt(None) == "from-env" and resolve_salt("given") == "given"


def test_a_jpeg_with_an_exif_orientation_is_read_upright(tmp_path):
    """Orientation 6 (camera turned 90°): stored rotated, shown upright by every viewer."""
    from PIL import Image

    from uslearn.data.images import read_image_file

    pixels = np.zeros((40, 60), np.uint8)
    pixels[:, :10] = 255  # a bright band on the left of the stored (sensor) image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    upright = read_image_file(tmp_path / "turned.jpg")
    assert upright.shape[:2] == (60, 40)  # rotated 90° clockwise: the band is now on top
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50
