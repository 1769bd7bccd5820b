"""``uslearn.config``: non-finite numbers and broken YAML files are refused with one line."""

import dataclasses

import pytest

from uslearn.config import ConfigError, from_flat, load_yaml


@dataclasses.dataclass(frozen=True)
class Knobs:
    lr: float = 0.1
    steps: int = 10


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "1e400", float("nan"), float("inf")]
)
def test_non_finite_numbers_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"Knobs.lr=.*: expected a finite number"):
        from_flat(Knobs, {"lr": value})


def test_finite_numbers_and_numeric_strings_still_parse():
    assert from_flat(Knobs, {"lr": "1e-3", "steps": "4"}) == Knobs(lr=0.001, steps=4)
    assert from_flat(Knobs, {"lr": 2}).lr == 2.0


def test_yaml_nan_is_refused_once_coerced(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: .nan\n")
    with pytest.raises(ConfigError, match="expected a finite number"):
        from_flat(Knobs, load_yaml(tmp_path / "c.yaml"))


@pytest.mark.parametrize(
    "text, message",
    [
        (None, r"c.yaml: no such config file"),
        ("lr: [1, 2\n", r"c.yaml, line \d+: not valid YAML"),
        ("- lr\n- steps\n", r"c.yaml: expected a mapping"),
        (b"lr: \xff\n", r"c.yaml: not UTF-8 text"),
    ],
)
def test_missing_or_broken_yaml_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)
