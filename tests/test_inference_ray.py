"""The last step of the workflow on real Ray (2 CPUs): study → register → predict, with Ray Data.

A two-trial LSD study on the tiny phantom registers its best trial by validation F1; predicting
the test split with the registered model reproduces that trial's logged test F1; the Ray Data
pipeline writes the same predictions as the single process, for dataset rows and for files.
"""

from __future__ import annotations

import contextlib
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score
from test_study_ray import probe_spec, ray_address, runs_of, study_argv  # noqa: F401

from uslearn.cli import main as uslearn
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.pseudonym import pseudonym
from uslearn.inference.output import label_columns, score_columns
from uslearn.study_cli import main as study

# A Ray of the module's own (address="local", 2 CPUs), as the study tests start it.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_address")]


def predict(args: list[str], capsys) -> str:
    assert uslearn(["predict", *args]) == 0
    return capsys.readouterr().out


def assert_same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows, ids and labels; scores equal up to float32 rounding of other batch shapes."""
    assert a["image"].tolist() == b["image"].tolist()
    assert (a[label_columns()].to_numpy() == b[label_columns()].to_numpy()).all()
    np.testing.assert_allclose(a[score_columns()], b[score_columns()], atol=1e-6)


@pytest.fixture(scope="module")
def study_store(tiny_phantom, tmp_path_factory):
    """Run a two-trial LSD study with --register; return (its folder, printed output)."""
    root = tmp_path_factory.mktemp("study")
    spec = probe_spec("probe_register", {"lsd": {"strategy": "lsd"}}, {"lam": [1.0, 2.0]}, (0,))
    argv = study_argv(root, tiny_phantom, "--register", "probe-best")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert study(spec, str(root / "probe_register.py"), argv) == 0
    return root, printed.getvalue()


def test_a_study_registers_its_best_trial_and_predict_reproduces_its_test_f1(
    study_store, tiny_phantom, tmp_path, capsys
):
    root, printed = study_store
    assert "as models:/probe-best/1" in printed
    client, _, children = runs_of(root, "probe_register")
    best = max(children, key=lambda r: r.data.metrics["val/f1_weighted"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version("probe-best", "1")
    assert version.tags["source_run"] == best.info.run_id
    (report,) = (root / "studies" / "probe_register").glob("*/report")
    assert (report / "fig7_predictions.png").is_file()
    assert "Fig. 7" in (report / "report.html").read_text()

    single, ray_csv = tmp_path / "single.csv", tmp_path / "ray.csv"
    model = ["--model", "models:/probe-best/1", "--mlflow", uri]
    data = ["--data", str(tiny_phantom), "--split", "test"]
    predict([*model, *data, "--out", str(single)], capsys)
    frame = pd.read_csv(single)
    truth = Dataset.open(tiny_phantom).manifest.set_index("image_id")
    y = truth.loc[frame["image"], list(CLASSES)].to_numpy()
    f1 = f1_score(y, frame[label_columns()].to_numpy(), average="weighted", zero_division=0)
    assert abs(f1 - best.data.metrics["test/f1_weighted"]) <= 1e-6
    assert "Ray Data" in predict([*model, *data, "--out", str(ray_csv), "--ray"], capsys)
    assert_same_predictions(pd.read_csv(ray_csv), frame)


def test_ray_data_scores_an_image_folder_like_the_single_process(
    study_store, tiny_phantom, tmp_path, capsys
):
    root, _ = study_store
    model = ["--model", "models:/probe-best/1", "--mlflow", f"sqlite:///{root / 'mlflow.db'}"]
    images = Dataset.open(tiny_phantom).images
    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        Image.fromarray(np.asarray(images[i])).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    outputs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "--batch-size", "3"])):
        out = tmp_path / f"{name}.csv"
        flags = [*model, "--images", str(folder), "--workers", "1", "--salt", "s", *extra]
        assert "1 skipped (unreadable 1)" in predict([*flags, "--out", str(out)], capsys)
        outputs[name] = pd.read_csv(out)
        rejected = pd.read_csv(tmp_path / f"{name}.csv.rejected.csv")
        assert rejected[["image_id", "reason"]].values.tolist() == [
            [pseudonym("image", "broken.png", "s"), "unreadable"]
        ]
    assert len(outputs["single"]) == 7 and "cluster" in outputs["single"]
    assert_same_predictions(outputs["ray"], outputs["single"])
    assert (outputs["ray"]["cluster"] == outputs["single"]["cluster"]).all()
