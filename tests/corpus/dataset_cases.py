"""Broken datasets, bad arguments and salts, configs and numbers, the report on a bad store."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from corpus.world import (
    SALT,
    Case,
    World,
    assert_in,
    case,
    flip_first_byte,
    import_argv,
    inputs,
)

# ---------------------------------------------------------------- broken datasets


def _broken(w: World, edit: Callable[[Path], None], *extra: str) -> tuple[list[str], Path]:
    ds = w.dataset()
    edit(ds)
    return ["data", "check", str(ds), *extra], ds


@case("data check: a truncated manifest.parquet")
def _(w):
    argv, ds = _broken(
        w,
        lambda d: (d / "manifest.parquet").write_bytes((d / "manifest.parquet").read_bytes()[:300]),
    )
    return Case(argv, 2, r"manifest.parquet: not a readable parquet file", "error", [ds])


@case("data check: meta.json is not JSON")
def _(w):
    argv, ds = _broken(w, lambda d: (d / "meta.json").write_text("{format: 1"))
    return Case(argv, 2, r"meta.json: not valid JSON", "error", [ds])


@case("data check: meta.json is a list")
def _(w):
    argv, ds = _broken(w, lambda d: (d / "meta.json").write_text("[1, 2]"))
    return Case(argv, 2, r"meta.json: expected a JSON object", "error", [ds])


@case("data check: a truncated images.u8")
def _(w):
    argv, ds = _broken(w, lambda d: os.truncate(d / "images.u8", 100))
    return Case(argv, 2, r"images.u8: 100 bytes, expected", "error", [ds])


@case("data check: a store byte changed (full verification)")
def _(w):
    argv, ds = _broken(w, flip_first_byte)
    return Case(argv, 1, r"fingerprint .* differs .*changed after writing", "error", [ds])


@case("data check --verify sample: a store byte changed in a sampled block")
def _(w):
    argv, ds = _broken(w, flip_first_byte, "--verify", "sample")
    return Case(argv, 1, r"sampled hash .* differs", "error", [ds])


@case("data check: a dataset of almost black frames (12-bit read as 16-bit)")
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.writer import DatasetWriter

    source = Dataset.open(w.base / "ds")
    with DatasetWriter(w.root / "dark", source.size, len(source), "test") as writer:
        writer.write(0, (np.asarray(source.images) // 20).astype(np.uint8))  # max 11 of 255
        writer.commit(source.manifest)
    argv = ["data", "check", str(w.root / "dark")]
    return Case(
        argv, 1, r"PROBLEM: 12 of 12 image\(s\) are almost black", "error", [w.root / "dark"]
    )


@case("data check: one flat frame is a note")
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.writer import DatasetWriter

    source = Dataset.open(w.base / "ds")
    images = np.array(source.images)
    images[0] = 128
    with DatasetWriter(w.root / "flat", source.size, len(source), "test") as writer:
        writer.write(0, images)
        writer.commit(source.manifest)
    argv = ["data", "check", str(w.root / "flat")]
    return Case(argv, 0, r"note: 1 of 12 image\(s\) are flat", "ok", [w.root / "flat"])


@case("data check on a folder that is no dataset")
def _(w):
    in_, _ = w.export()
    return Case(["data", "check", str(in_)], 2, r"manifest.parquet: missing", "error", [in_])


@case("data split on a missing dataset")
def _(w):
    return Case(
        ["data", "split", str(w.root / "nope")], 2, r"nope: no dataset directory here", "error"
    )


@case("data split --val nan")
def _(w):
    ds = w.dataset()
    argv = ["data", "split", str(ds), "--val", "nan"]
    return Case(argv, 2, r"--val: .*nan: expected a finite number", "error", [ds])


# --------------------------------------------------------------- arguments, salt


@case("a salt of one space")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index(SALT)] = " "
    return Case(argv, 2, r"--salt: the salt is only blanks", "error", inputs(w))


@case("USLEARN_SALT of blanks")
def _(w):
    w.export()
    argv = import_argv(w)
    i = argv.index("--salt")
    del argv[i : i + 2]
    return Case(
        argv,
        2,
        r"USLEARN_SALT: the salt is only blanks",
        "error",
        inputs(w),
        env={"USLEARN_SALT": "   "},
    )


@case("no salt")
def _(w):
    w.export()
    argv = import_argv(w)
    i = argv.index("--salt")
    del argv[i : i + 2]
    return Case(
        argv, 2, r"no salt for pseudonymising", "error", inputs(w), env={"USLEARN_SALT": ""}
    )


@case("--keep-paths (removed: source paths hold names)")
def _(w):
    w.export()
    return Case(import_argv(w, "--keep-paths"), 2, r"--keep-paths was removed", "error", inputs(w))


@case("--doppler-fraction nan")
def _(w):
    w.export()
    argv = import_argv(w, "--doppler-fraction", "nan")
    return Case(argv, 2, r"--doppler-fraction: .*expected a finite number", "error", inputs(w))


@case("--workers 0")
def _(w):
    w.export()
    return Case(
        import_argv(w, "--workers", "0"), 2, r"--workers 0: expected at least 1", "error", inputs(w)
    )


@case("--size 8")
def _(w):
    w.export()
    return Case(import_argv(w, "--size", "8"), 2, r"--size 8 is out of range", "error", inputs(w))


@case("--images that does not exist")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index("--images") + 1] = str(w.root / "nope")
    return Case(argv, 2, r"--images .*nope: not a folder", "error", inputs(w))


@case("--labels that does not exist")
def _(w):
    w.export()
    argv = import_argv(w)
    argv[argv.index("--labels") + 1] = str(w.root / "nope.csv")
    return Case(argv, 2, r"nope.csv", "error", inputs(w))


@case("a labels CSV with an unknown organ")
def _(w):
    w.export()
    table = pd.read_csv(w.root / "labels.csv", keep_default_na=False)
    table.loc[4, "labels"] = "lung"
    table.to_csv(w.root / "labels.csv", index=False)
    return Case(import_argv(w), 2, r"labels.csv, line 6: .*lung", "error", inputs(w))


@case("a labels CSV that is not UTF-8")
def _(w):
    w.export()
    csv = w.root / "labels.csv"
    csv.write_bytes(csv.read_bytes().replace(b"liver", b"f\xf6ie", 1))
    return Case(import_argv(w), 2, r"line 2 is not UTF-8", "error", inputs(w))


@case("data locate with a malformed id")
def _(w):
    in_, _ = w.export()
    argv = ["data", "locate", "--images", str(in_), "--salt", SALT, "DUPONT_Jean"]
    return Case(argv, 2, r"'DUPONT_Jean' is not an image id", "error", [in_])


# ------------------------------------------------------- configs, numbers, report


def _train_argv(w: World, *extra: str) -> list[str]:
    ds = w.dataset()
    return ["train", "--data", str(ds), "--strategy", "lsd", "--out", str(w.root / "run"), *extra]


@case("train --config that does not exist")
def _(w):
    argv = _train_argv(w, "--config", str(w.root / "missing.yaml"))
    return Case(argv, 2, r"missing.yaml: no such config file", "error", [w.root / "ds"])


@case("train --config with bad YAML")
def _(w):
    (w.root / "bad.yaml").write_text("lr: 0.1\nlam: [1, 2\nseed: 3\n")
    argv = _train_argv(w, "--config", str(w.root / "bad.yaml"))
    return Case(
        argv,
        2,
        r"bad.yaml, line \d+: not valid YAML",
        "error",
        [w.root / "ds", w.root / "bad.yaml"],
    )


@case("train --lam nan")
def _(w):
    return Case(
        _train_argv(w, "--lam", "nan"),
        2,
        r"lam='nan': expected a finite number",
        "error",
        [w.root / "ds"],
    )


@case("report on a missing MLflow store")
def _(w):
    argv = ["report", "--study", "lambda_sensitivity"]
    env = {"USLEARN_RUNS": str(w.root / "runs"), "MLFLOW_TRACKING_URI": ""}
    check = lambda _: assert_in("[]", str(list(w.root.iterdir())))  # noqa: E731
    return Case(
        argv,
        2,
        r"no MLflow store at .*mlflow.db.*nothing was created",
        "error",
        env=env,
        check=check,
    )


@case("report on an empty MLflow store file")
def _(w):
    (w.root / "empty.db").write_bytes(b"")
    argv = ["report", "--study", "x", "--tracking-uri", f"sqlite:///{w.root / 'empty.db'}"]
    return Case(argv, 2, r"no MLflow store at .*empty.db", "error", [w.root / "empty.db"])
