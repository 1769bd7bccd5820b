"""Every command that writes, pointed at an input or at a file of another kind (issue 21, 1).

One rule holds for all of them (``uslearn.data.target.check_output``): an output never lands
on or inside an input, and ``--overwrite`` replaces only the command's own earlier output.
"""

from __future__ import annotations

import pandas as pd
from PIL import Image

from corpus.predict_cases import predict_argv
from corpus.world import SALT, Case, World, case, frame, inputs, train_argv


def _tags_inside_images(w: World):
    """The export with its labels CSV kept inside the image folder, as exports often are."""
    export, labels = w.export()
    tags = export / "tags.csv"
    labels.rename(tags)
    return export, tags


@case("predict --images in --out in/tags.csv --overwrite (the labels inside the images)", slow=True)
def _(w):
    export, tags = _tags_inside_images(w)
    argv = predict_argv(w, "--images", str(export), "--salt", SALT, "--overwrite")
    argv[argv.index("--out") + 1] = str(tags)
    return Case(
        argv, 2, r"--out .*in/tags.csv is inside the input .*in; write it", "error", [export]
    )


@case("predict --data ds --out ds/manifest.parquet --overwrite", slow=True)
def _(w):
    ds = w.dataset()
    argv = predict_argv(w, "--data", str(ds), "--overwrite")
    argv[argv.index("--out") + 1] = str(ds / "manifest.parquet")
    return Case(argv, 2, r"--out .*ds/manifest.parquet is inside the input", "error", [ds])


@case("predict --out the user's own CSV --overwrite (not a predictions file)", slow=True)
def _(w):
    tiny = w.tiny()
    pd.DataFrame({"path": ["a.png"], "labels": ["liver"]}).to_csv(w.root / "p.csv", index=False)
    return Case(
        predict_argv(w, "--data", str(tiny), "--overwrite"),
        2,
        r"--out .*p.csv: is not a predictions file .*nothing was touched",
        "error",
        [tiny, w.root / "p.csv"],
    )


@case("predict --out its earlier predictions --overwrite (replaced)", slow=True)
def _(w):
    tiny = w.tiny()

    def replaced(output):
        table = pd.read_csv(w.root / "p.csv")
        assert len(table) > 1 and table.columns[0] == "image", table

    (w.root / "p.csv").write_text("image,score_liver,label_liver,labels\ni-0,0.5,1,liver\n")
    return Case(
        predict_argv(w, "--data", str(tiny), "--overwrite"),
        0,
        r"images scored",
        "ok",
        [tiny],
        check=replaced,
    )


@case("predict --data: a photo of the user's where Fig. 7 goes", slow=True)
def _(w):
    tiny = w.tiny()
    Image.fromarray(frame(1)).save(w.root / "p.fig7.png")
    return Case(
        predict_argv(w, "--data", str(tiny)),
        2,
        r"--out's Fig. 7 .*p.fig7.png: is not a PNG figure that uslearn wrote",
        "error",
        [tiny, w.root / "p.fig7.png"],
    )


@case("curate --out inside its --data, --overwrite", slow=True)
def _(w):
    tiny = w.tiny()
    argv = ["curate", "--model", str(w.run()), "--data", str(tiny), "--overwrite"]
    return Case(
        [*argv, "--out", str(tiny / "curate")],
        2,
        r"--out .*tiny/curate is inside the input .*tiny",
        "error",
        [tiny],
    )


def _store(w: World):
    """A folder holding an MLflow sqlite file (content never read: the check comes first)."""
    (w.root / "runs").mkdir()
    (w.root / "runs" / "mlflow.db").write_bytes(b"SQLite format 3\0")
    return w.root / "runs"


@case("report --out the folder of its MLflow store")
def _(w):
    runs = _store(w)
    argv = ["report", "--study", "s", "--mlflow", f"sqlite:///{runs / 'mlflow.db'}"]
    return Case(
        [*argv, "--out", str(runs), "--overwrite"],
        2,
        r"--out .*runs contains the input .*mlflow.db",
        "error",
        [runs],
    )


@case("report --out a folder of the user's")
def _(w):
    runs = _store(w)
    (w.root / "thesis").mkdir()
    (w.root / "thesis" / "chapter1.tex").write_text("mine")
    argv = ["report", "--study", "s", "--mlflow", f"sqlite:///{runs / 'mlflow.db'}"]
    return Case(
        [*argv, "--out", str(w.root / "thesis"), "--overwrite"],
        2,
        r"--out .*thesis: is not an earlier report \(no report.html\)",
        "error",
        [runs, w.root / "thesis"],
    )


@case("train --out inside its --data")
def _(w):
    tiny = w.tiny()
    return Case(
        train_argv(w, data=tiny, out=tiny / "run"),
        2,
        r"--out .*tiny/run is inside the input .*tiny",
        "error",
        [tiny],
    )


@case("train --overwrite the run whose best.pt is its --init")
def _(w):
    run, tiny = w.run(), w.tiny()
    argv = train_argv(w, data=tiny, out=run)
    argv[argv.index("lsd")] = "supervised"
    argv[argv.index("--epochs") :] = [
        "--epochs",
        "1",
        "--overwrite",
        "--init",
        str(run / "best.pt"),
    ]
    return Case(argv, 2, r"--out .*run contains the input .*run/best.pt", "error", [run, tiny])


@case("gallery --out inside its dataset")
def _(w):
    ds = w.dataset()
    argv = ["data", "gallery", str(ds), "--out", str(ds / "gallery.png"), "--overwrite"]
    return Case(argv, 2, r"--out .*ds/gallery.png is inside the input", "error", [ds])


@case("gallery --out a PNG photo of the user's, --overwrite")
def _(w):
    w.export()
    ds, photo = w.dataset(), w.root / "in" / "DUPONT_Jean_0" / "IPP900000" / "img0.png"
    argv = ["data", "gallery", str(ds), "--out", str(photo), "--overwrite"]
    return Case(argv, 2, r"is not a PNG figure that uslearn wrote", "error", [*inputs(w), ds])


@case("gallery --out its earlier gallery without --overwrite")
def _(w):
    from uslearn.data.dataset import Dataset
    from uslearn.data.gallery import write_gallery

    ds = w.dataset()
    write_gallery(Dataset.open(ds), w.root / "g.png", per_class=1)
    argv = ["data", "gallery", str(ds), "--out", str(w.root / "g.png")]
    return Case(argv, 2, r"g.png: already exists; .* --overwrite", "error", [ds, w.root / "g.png"])
