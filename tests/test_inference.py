"""Using a trained model: the package, its MLflow model, ``uslearn predict / curate / register``.

Two real runs on the tiny phantom (32 px, 1 epoch; real ResNet18, real sqlite MLflow) made
once for the module with ``uslearn train --mlflow``; every command is the real one.
"""

from __future__ import annotations

import base64
import json
import re
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score
from test_data_dicom import dicom, save, smooth_rgb

from analysis.gallery import pick_fig7
from uslearn.cli import main
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.pseudonym import pseudonym
from uslearn.inference.curate import exclusive_other, spread_ranking
from uslearn.inference.output import label_columns, score_columns
from uslearn.inference.package import ModelPackage
from uslearn.study.logged_models import best_child_run, register_run
from uslearn.study.run_model import log_model
from uslearn.study.tracking import client as tracking_client

TINY = ["--size", "32", "--batch-exams", "4", "--max-images-per-exam", "4", "--device", "cpu"]
SALT = "predict-test-salt"


@pytest.fixture(scope="module")
def trained(tiny_phantom, tmp_path_factory):
    """Return (tracking URI, {strategy: (run id, run dir)}) of a supervised and an LSD run."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for strategy in ("supervised", "lsd"):
        out = root / strategy
        args = ["train", "--data", str(tiny_phantom), "--strategy", strategy, "--epochs", "1"]
        if strategy == "supervised":  # fine-tuning lasts 300 steps by default
            args += ["--min-steps", "4"]
        assert main([*args, "--out", str(out), "--mlflow", uri, *TINY]) == 0
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("uslearn-train").experiment_id
        found = client.search_runs([experiment], f"params.strategy = '{strategy}'")
        runs[strategy] = (found[0].info.run_id, out)
    return uri, runs


def raw_frame(image: np.ndarray, colour: bool = False) -> np.ndarray:
    """Return a stored image as a larger RGB 'screen capture': black margin, text stripe."""
    frame = np.zeros((image.shape[0] + 24, image.shape[1] + 16, 3), np.uint8)
    frame[12:-12, 8:-8] = image[..., None]
    frame[2:5, 2:20] = 255  # burned-in text far from the sector
    if colour:
        frame[16:28, 14:26] = (220, 30, 30)  # a colour-Doppler box
    return frame


@pytest.fixture(scope="module")
def image_folder(tiny_phantom, tmp_path_factory):
    """Return a folder of PNG frames: 3 good (one nested), 1 colour Doppler, 1 corrupt."""
    data = Dataset.open(tiny_phantom)
    root = tmp_path_factory.mktemp("frames")
    (root / "exam2").mkdir()
    for i, name in enumerate(("a.png", "b.png", "exam2/c.png")):
        Image.fromarray(raw_frame(np.asarray(data.images[i]))).save(root / name)
    Image.fromarray(raw_frame(np.asarray(data.images[3]), colour=True)).save(root / "doppler.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_leaves_a_package_and_logs_an_mlflow_model_with_a_signature(trained, tiny_phantom):
    uri, runs = trained
    data = Dataset.open(tiny_phantom)
    mlflow.set_tracking_uri(uri)  # a user's MLFLOW_TRACKING_URI: runs:/ resolves through it
    for strategy, family, head in (
        ("supervised", "supervised", "multilabel"),
        ("lsd", "clustering", "cluster"),
    ):
        run_id, out = runs[strategy]
        package = ModelPackage.load(out)
        assert package.classes == CLASSES and package.head == head
        assert package.family == family and package.strategy == strategy
        assert package.image_size == 32 and package.stored_size == data.size
        assert package.dataset_fingerprint == data.fingerprint
        assert (package.cluster_labels is not None) == (strategy == "lsd")
        thresholds = json.loads((out / "thresholds.json").read_text())
        assert package.thresholds.tolist() == [thresholds[c] for c in CLASSES]
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        signature = model.metadata.signature
        assert signature.inputs.input_names() == ["image"]
        assert signature.params.params[0].name == "prepared"
        assert set(signature.outputs.input_names()) >= {*score_columns(), *label_columns()}
        assert model.metadata.metadata["strategy"] == strategy


@pytest.mark.parametrize("strategy", ["supervised", "lsd"])
def test_predict_on_the_test_split_reproduces_the_logged_test_f1(
    trained, tiny_phantom, tmp_path, capsys, strategy
):
    uri, runs = trained
    run_id, out = runs[strategy]
    code, printed, _ = run_cli(
        ["register", "--run", run_id, "--name", f"tiny-{strategy}", "--mlflow", uri], capsys
    )
    assert code == 0 and f"models:/tiny-{strategy}/1" in printed
    csv = tmp_path / "predictions.csv"
    args = ["predict", "--model", f"models:/tiny-{strategy}/1", "--mlflow", uri]
    code, printed, _ = run_cli(
        [*args, "--data", str(tiny_phantom), "--split", "test", "--out", str(csv)], capsys
    )
    assert code == 0 and "img/s" in printed
    frame = pd.read_csv(csv)
    assert list(frame.columns[:15]) == ["image", *score_columns(), *label_columns()]
    data = Dataset.open(tiny_phantom)
    truth = data.manifest.set_index("image_id").loc[frame["image"], list(CLASSES)].to_numpy()
    assert len(frame) == len(data.indices("test"))
    logged = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    predicted = frame[label_columns()].to_numpy()
    f1 = f1_score(truth, predicted, average="weighted", zero_division=0)
    assert abs(f1 - logged["test/f1_weighted"]) <= 1e-6
    per_class = f1_score(truth, predicted, average=None, zero_division=0)
    for c, name in enumerate(CLASSES):
        assert abs(per_class[c] - logged[f"test/f1/{name}"]) <= 1e-6
    joined = frame[label_columns()].apply(
        lambda row: ";".join(c for c, v in zip(CLASSES, row) if v), axis=1
    )
    assert (frame["labels"].fillna("") == joined).all()
    assert ("cluster" in frame) == (strategy == "lsd")
    with Image.open(tmp_path / "predictions.fig7.png") as figure:
        assert min(figure.size) > 400
    # The run directory is the same model.
    again = tmp_path / "again.csv"
    args = ["predict", "--model", str(out), "--data", str(tiny_phantom), "--split", "test"]
    assert run_cli([*args, "--out", str(again)], capsys)[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(again), frame)


def test_pyfunc_scores_paths_bytes_and_arrays_by_the_import_rules(
    trained, tiny_phantom, image_folder, capsys, tmp_path
):
    uri, runs = trained
    run_id, out = runs["supervised"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    package = ModelPackage.load(out)
    good = image_folder / "a.png"
    frame = np.asarray(Image.open(good))
    inputs = pd.DataFrame(
        {
            "image": [
                str(good),
                good.read_bytes(),
                frame,
                str(image_folder / "doppler.png"),
                str(image_folder / "broken.png"),
            ]
        }
    )
    result = model.predict(inputs)
    expected = package.score(package.prepare(frame)[None]).scores[0]
    # Float32 scores of batches of other shapes differ in the last bits (CPU convolutions).
    for i in range(3):
        np.testing.assert_allclose(
            result.loc[i, score_columns()].to_numpy(float), expected, atol=1e-6
        )
        assert result.loc[i, "error"] == ""
    assert result.loc[3, "error"].startswith("doppler")
    assert result.loc[4, "error"].startswith("unreadable")
    assert (result.loc[3:4, label_columns()] == -1).all().all()
    # Stored images (prepared=True) score as dataset rows do in `uslearn predict --data`.
    data = Dataset.open(tiny_phantom)
    rows = data.indices("test")[:4]
    prepared = model.predict(
        pd.DataFrame({"image": [np.asarray(data.images[r]) for r in rows]}),
        params={"prepared": True},
    )
    csv = tmp_path / "test.csv"
    args = ["predict", "--model", str(out), "--data", str(tiny_phantom), "--split", "test"]
    assert run_cli([*args, "--out", str(csv)], capsys)[0] == 0
    by_id = pd.read_csv(csv).set_index("image")
    ids = data.manifest["image_id"].to_numpy()[rows]
    np.testing.assert_allclose(
        prepared[score_columns()].to_numpy(float),
        by_id.loc[ids, score_columns()].to_numpy(),
        atol=1e-6,
    )


def test_predict_on_an_image_folder_skips_and_lists_bad_files(
    trained, image_folder, tmp_path, capsys
):
    _, runs = trained
    run_id, out = runs["supervised"]
    csv = tmp_path / "folder.csv"
    args = ["predict", "--model", str(out), "--images", str(image_folder), "--workers", "1"]
    code, printed, err = run_cli([*args, "--salt", SALT, "--out", str(csv)], capsys)
    assert code == 0 and "2 skipped (doppler 1, unreadable 1)" in printed
    assert "skipped broken.png: unreadable" in err  # paths on the terminal only
    frame = pd.read_csv(csv)
    # The ids a folder import with this salt gives: no path (folder names may be patients').
    names = ["a.png", "b.png", "exam2/c.png"]
    assert frame["image"].tolist() == [pseudonym("image", name, SALT) for name in names]
    rejected = pd.read_csv(tmp_path / "folder.csv.rejected.csv")
    assert sorted(zip(rejected["image_id"], rejected["reason"])) == sorted(
        [
            (pseudonym("image", "broken.png", SALT), "unreadable"),
            (pseudonym("image", "doppler.png", SALT), "doppler"),
        ]
    )
    for written in (csv, tmp_path / "folder.csv.rejected.csv"):
        assert not re.search(r"\.png|exam2", written.read_text())
    package = ModelPackage.load(out)
    for name in names:
        pixels = np.asarray(Image.open(image_folder / name))
        expected = package.score(package.prepare(pixels)[None]).scores[0]
        image_id = pseudonym("image", name, SALT)
        row = frame.set_index("image").loc[image_id, score_columns()].to_numpy(float)
        np.testing.assert_allclose(row, expected, atol=1e-6)


def test_predict_on_dicom_writes_pseudonyms_and_no_raw_identifier(trained, tmp_path, capsys):
    _, runs = trained
    out = runs["lsd"][1]
    folder = tmp_path / "export"
    gray, doppler = smooth_rgb(40, 48), smooth_rgb(40, 48, seed=1)
    doppler[10:24, 10:24] = (200, 20, 20)
    kept = save(dicom(gray, "RGB", patient="PAT-9"), folder / "PAT-9" / "IM1")
    save(dicom(doppler, "RGB", patient="PAT-9"), folder / "PAT-9" / "IM2")
    csv = tmp_path / "dicom.csv"
    args = ["predict", "--model", str(out), "--dicom", str(folder), "--salt", SALT]
    code, printed, _ = run_cli([*args, "--out", str(csv), "--workers", "1"], capsys)
    assert code == 0 and "doppler 1" in printed
    import pydicom

    sop = str(pydicom.dcmread(kept).SOPInstanceUID)
    frame = pd.read_csv(csv)
    assert frame["image"].tolist() == [pseudonym("image", sop, SALT)]
    text = csv.read_text()
    for secret in ("PAT-9", "Doe", sop, "IM1"):
        assert secret not in text


@pytest.fixture(scope="module")
def other_size(tmp_path_factory):
    from uslearn.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("p48") / "p48", "tiny", exams=8, size=48)


def test_each_bad_request_is_refused_with_one_clear_line(
    trained, tiny_phantom, other_size, image_folder, tmp_path, capsys
):
    uri, runs = trained
    run_dir = runs["supervised"][1]
    swapped = tmp_path / "swapped"
    shutil.copytree(run_dir, swapped, ignore=shutil.ignore_patterns("checkpoint"))
    info = json.loads((swapped / "package.json").read_text())
    info["classes"] = list(reversed(info["classes"]))
    (swapped / "package.json").write_text(json.dumps(info))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    shutil.copy(image_folder / "broken.png", tmp_path / "bad")
    (tmp_path / "exists.csv").write_text("keep me\n")
    data = ["--data", str(tiny_phantom)]
    cases = [
        (["--model", "runs:/0123456789abcdef0123456789abcdef", *data], "not found"),
        (["--model", "models:/no-such-model/1", *data], "not found"),
        (["--model", str(tmp_path / "nowhere"), *data], "no such directory"),
        (["--model", str(swapped), *data], "classes"),
        (["--model", str(run_dir), "--data", str(other_size)], "stored at 48 px"),
        (["--model", str(run_dir), "--images", str(tmp_path / "empty")], "no image files"),
        (["--model", str(run_dir), "--images", str(tmp_path / "bad")], "no image could be scored"),
        (["--model", str(run_dir), *data, "--split", "val", "--out-exists"], "already exists"),
    ]
    for args, message in cases:
        out = tmp_path / ("exists.csv" if "--out-exists" in args else "p.csv")
        args = [a for a in args if a != "--out-exists"]
        flags = ["--out", str(out), "--mlflow", uri, "--workers", "1", "--salt", SALT]
        code, _, err = run_cli(["predict", *args, *flags], capsys)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert lines[-1].startswith("uslearn predict: error:") and message in lines[-1], err
        assert "Traceback" not in err
    assert (tmp_path / "exists.csv").read_text() == "keep me\n"
    code, _, err = run_cli(
        ["curate", "--model", str(run_dir), *data, "--out", str(tmp_path / "c")], capsys
    )
    assert code == 2 and "curate needs a clustering model" in err
    code, _, err = run_cli(["register", "--run", "f" * 32, "--name", "x", "--mlflow", uri], capsys)
    assert code == 2 and "not found" in err


def test_curate_writes_sheets_a_self_contained_page_and_a_spread_ranking(
    trained, tiny_phantom, tmp_path, capsys
):
    _, runs = trained
    out = tmp_path / "curated"
    args = ["curate", "--model", str(runs["lsd"][1]), "--data", str(tiny_phantom)]
    code, printed, _ = run_cli([*args, "--out", str(out), "--rank", "40"], capsys)
    assert code == 0 and "index.html" in printed
    data = Dataset.open(tiny_phantom)
    clusters = pd.read_csv(out / "clusters.csv")
    assert clusters["size"].sum() == len(data)
    sheets = sorted((out / "sheets").glob("cluster_*.png"))
    assert len(sheets) == (clusters["size"] > 0).sum() > 0
    proposed = pd.read_csv(out / "proposed_labels.csv", keep_default_na=False)
    assert len(proposed) == len(data) and set(proposed["image"]) == set(data.manifest["image_id"])
    for labels in proposed["labels"]:
        names = set(filter(None, labels.split(";")))
        assert names <= set(CLASSES) and ("other" not in names or names == {"other"})
    ranking = pd.read_csv(out / "to_label.csv")
    assert len(ranking) == 40
    split = data.manifest.set_index("image_id")["split"]
    assert (split.loc[ranking["image"]] == "unlabelled").all()  # labelled images need no labels
    candidates = proposed.set_index("image").loc[split[split == "unlabelled"].index]
    first = ranking.head(candidates["cluster"].nunique())
    assert first["cluster"].is_unique  # the clusters take turns
    assert set(ranking["exam_id"]) == set(candidates["exam_id"])  # spread over every exam
    page = (out / "index.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == len(sheets) + len(ranking)
    assert base64.b64encode(sheets[0].read_bytes()).decode() in embedded
    assert not re.search(r"(src|href)=['\"]?https?:", page)
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert len(tasks) == 40 and all((out / "images").glob("*.png"))
    for task in tasks:
        choices = task["predictions"][0]["result"][0]["value"]["choices"]
        assert set(choices) <= set(CLASSES)


def test_a_proposal_never_pairs_other_with_an_organ():
    # Found by the Label Studio round trip: a cluster of the tiny phantom's LSD model passed
    # the thresholds of 'other' and of organs, and accepting its proposal was refused.
    classes = ("liver", "other", "kidney")
    labels = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0]], np.int8)
    fixed = exclusive_other(labels, classes)
    assert fixed.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]]
    assert labels[0, 1] == 1  # the input is left as it was


def test_spread_ranking_takes_clusters_in_turn_and_new_exams_first():
    priority = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.1])
    cluster = np.array([0, 0, 0, 0, 1, 1])
    exam = np.array(["e1", "e1", "e2", "e3", "e1", "e4"])
    # Cluster 0 (largest) first: its best (0, e1); cluster 1: its best (4) repeats e1, but
    # 5 is from a new exam; then cluster 0 skips 1 (e1 used) for 2 (e2), ...
    assert spread_ranking(priority, cluster, exam, 6) == [0, 5, 2, 4, 3, 1]
    assert spread_ranking(priority, cluster, exam, 2) == [0, 5]


def test_fig7_picks_exact_matches_first_and_the_most_confident_mistakes():
    y_true = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [1, 0]])
    y_pred = np.array([[1, 0], [1, 1], [1, 1], [1, 1], [0, 0]])
    scores = np.array([[0.7, 0.1], [0.9, 0.6], [0.8, 0.7], [0.95, 0.8], [0.2, 0.3]])
    found, wrong = pick_fig7(y_true, y_pred, scores, per_class=2)[0]
    assert found == [2, 0]  # exact matches (2, 0) before the partly wrong 1, by score
    assert wrong == [4, 3]  # the missed positive, then the most confident false positive


def test_best_child_run_is_chosen_by_validation_f1_among_finished_trials(trained):
    uri, _ = trained
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("a-study")
    parent = client.create_run(experiment).info.run_id
    ids = {}
    for name, val, test, status in (
        ("a", 0.5, 0.9, "FINISHED"),
        ("b", 0.7, 0.1, "FINISHED"),
        ("c", 0.9, 0.9, "FAILED"),
    ):
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(run, "val/f1_weighted", val)
        client.log_metric(run, "test/f1_weighted", test)
        client.set_terminated(run, status)
        ids[name] = run
    assert best_child_run(uri, parent) == (ids["b"], 0.7)


def test_a_model_logged_for_a_trial_run_joins_that_runs_experiment(trained, tiny_phantom):
    # A study trial's process has no fluent experiment set: the model once went to "Default".
    uri, runs = trained
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("trial-like")
    run_id = client.create_run(experiment).info.run_id
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("elsewhere")
    log_model(tracking_client(uri), run_id, runs["supervised"][1], Dataset.open(tiny_phantom))
    (model,) = client.search_logged_models([experiment], f"source_run_id = '{run_id}'")
    assert model.name == "model"
    assert int(register_run(uri, run_id, "trial-like").version) == 1


def test_registry_references_resolve_in_the_given_store_not_the_process_default(
    trained, tiny_phantom, tmp_path, capsys
):
    # models:/ once went through the fluent registry, i.e. the process default ./mlflow.db.
    uri, runs = trained
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    register = ["register", "--run", runs["lsd"][0], "--name", "given-store", "--mlflow", uri]
    assert run_cli(register, capsys)[0] == 0
    for i, model in enumerate(("models:/given-store/1", f"runs:/{runs['lsd'][0]}")):
        args = ["predict", "--model", model, "--mlflow", uri, "--split", "val"]
        out = tmp_path / f"p{i}.csv"
        code, _, err = run_cli([*args, "--data", str(tiny_phantom), "--out", str(out)], capsys)
        assert code == 0, err
    assert mlflow.MlflowClient(uri, registry_uri=uri).get_registered_model("given-store")


def test_register_study_takes_the_latest_finished_invocation_without_running_it(tmp_path):
    """``uslearn register --study`` finds the study's latest parent run (issue 21)."""
    from test_analysis_factories import log_study

    from uslearn.errors import UserError
    from uslearn.predict_cli import _latest_parent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("lambda_sensitivity")
    trials = [(dict(strategy="pica", lam=1.0, seed=0), {"val/f1_weighted": 0.5})]
    log_study(client, experiment, "lambda_sensitivity", trials)
    latest = log_study(client, experiment, "lambda_sensitivity", trials)
    assert _latest_parent(uri, "lambda_sensitivity") == latest
    with pytest.raises(UserError, match="--study nope: no finished run of that study"):
        _latest_parent(uri, "nope")
