"""predict, curate and register with bad models, inputs and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from corpus.world import SALT, Case, World, case, inputs, replace_file

# ------------------------------------------------------------- predict, curate, register


def predict_argv(w: World, *extra: str, model: Path | str | None = None) -> list[str]:
    """Return a ``uslearn predict`` with the finished run as its model, into ``p.csv``."""
    model = w.run() if model is None else model
    out = ["--out", str(w.root / "p.csv"), "--workers", "1", "--device", "cpu"]
    return ["predict", "--model", str(model), *out, *extra]


@case("predict --model a folder that does not exist")
def _(w):
    tiny = w.tiny()
    return Case(
        predict_argv(w, "--data", str(tiny), model=w.root / "nowhere"),
        2,
        r"model .*nowhere: no such directory",
        "error",
        [tiny],
    )


@case("predict --model models:/ a name the MLflow store does not have", slow=True)
def _(w):
    tiny = w.tiny()
    mlflow = ["--mlflow", f"sqlite:///{w.root / 'mlflow.db'}"]
    return Case(
        predict_argv(w, "--data", str(tiny), *mlflow, model="models:/no-such-model/1"),
        2,
        r"model models:/no-such-model/1: not found in sqlite:",
        "error",
        [tiny],
    )


@case("predict with a model whose class list differs from the data's", slow=True)
def _(w):
    run, tiny = w.run(), w.tiny()
    info = json.loads((run / "package.json").read_text())
    info["classes"] = info["classes"][::-1]
    replace_file(run / "package.json", json.dumps(info).encode())
    return Case(
        predict_argv(w, "--data", str(tiny), model=run),
        2,
        r"tiny: classes \['liver', .*\] differ from the model's \['bladder', ",
        "error",
        [run, tiny],
    )


@case("predict on a dataset stored at 48 px with a model trained on 32 px images", slow=True)
def _(w):
    from uslearn.data.images import Preprocess
    from uslearn.data.importers import ImportSettings, import_folder

    export, labels = w.export()
    settings = ImportSettings(preprocess=Preprocess(size=48), splits={"val": 1, "test": 1})
    import_folder(export, labels, w.root / "ds48", SALT, settings)
    return Case(
        predict_argv(w, "--data", str(w.root / "ds48")),
        2,
        r"ds48: images are stored at 48 px, the model was trained on 32 px images; import the "
        r"data again with --size 32",
        "error",
        [w.root / "ds48", w.root / "run"],
    )


@case("predict --images an empty folder", slow=True)
def _(w):
    (w.root / "empty").mkdir()
    return Case(
        predict_argv(w, "--images", str(w.root / "empty"), "--salt", SALT),
        2,
        r"--images .*empty: no image files found",
        "error",
        [w.root / "empty"],
    )


@case("predict --images without a salt", slow=True)
def _(w):
    w.export()
    return Case(
        predict_argv(w, "--images", str(w.root / "in")),
        2,
        r"no salt for pseudonymising",
        "error",
        inputs(w),
    )


@case("predict --out an existing file", slow=True)
def _(w):
    tiny = w.tiny()
    (w.root / "p.csv").write_text("my notes\n")
    return Case(
        predict_argv(w, "--data", str(tiny)),
        2,
        r"--out .*p.csv: already exists; choose another path or pass --overwrite",
        "error",
        [tiny, w.root / "p.csv"],
    )


@case("predict --images an export whose folders are patient names: no path written", slow=True)
def _(w):
    w.export()
    w.add_image("DUPONT_Jean_9/IPP900009/bad.png", lambda p: p.write_bytes(b"not a png"))

    def nothing_named(output):
        table = pd.read_csv(w.root / "p.csv")
        assert len(table) == 12 and table["image"].str.fullmatch(r"i-[0-9a-f]{16}").all(), table
        rejected = pd.read_csv(w.root / "p.csv.rejected.csv")
        assert rejected["reason"].tolist() == ["unreadable"], rejected

    return Case(
        predict_argv(w, "--images", str(w.root / "in"), "--salt", SALT),
        0,
        r"12 images scored .*\n1 skipped \(unreadable 1\): listed in .*p.csv.rejected.csv",
        "skipped",
        inputs(w),
        check=nothing_named,
    )


@case("curate --out an existing folder of the user's", slow=True)
def _(w):
    tiny = w.tiny()
    (w.root / "mine").mkdir()
    (w.root / "mine" / "notes.txt").write_text("keep\n")
    return Case(
        ["curate", "--model", str(w.run()), "--data", str(tiny), "--out", str(w.root / "mine")],
        2,
        r"--out .*mine: already exists; choose another path or pass --overwrite",
        "error",
        [tiny, w.root / "mine"],
    )


@case("register --run a run the MLflow store does not have", slow=True)
def _(w):
    mlflow = f"sqlite:///{w.root / 'mlflow.db'}"
    return Case(
        ["register", "--run", "0" * 32, "--name", "best", "--mlflow", mlflow],
        2,
        r"run 0{32}: not found in sqlite:",
        "error",
    )
