"""A finished run's MLflow page leads with its test F1 and its learning curves (issue 21)."""

from __future__ import annotations

import json

import mlflow
from PIL import Image

from uslearn.study.run_page import CURVES, NOTE_TAG, describe, describe_run


def test_describe_run_logs_the_curves_and_a_description_with_the_test_f1(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = mlflow.MlflowClient(uri)
    run_id = mlc.create_run(mlc.create_experiment("e")).info.run_id
    out = tmp_path / "run"
    out.mkdir()
    history = [{"step": s, "train/loss": 1.0 / s, "val/f1_weighted": 0.1 * s} for s in range(1, 6)]
    (out / "history.json").write_text(json.dumps(history))
    (out / "config.json").write_text(json.dumps({"strategy": "pica"}))
    describe_run(mlc, run_id, out, {"test/f1_weighted": 0.61234, "val/f1_weighted": 0.5})
    note = mlc.get_run(run_id).data.tags[NOTE_TAG]
    assert note.startswith("**test F1 (weighted): 0.6123**") and CURVES in note, note
    assert "pica" in note and "5 evaluations" in note
    assert CURVES in [f.path for f in mlc.list_artifacts(run_id)]
    local = mlc.download_artifacts(run_id, CURVES, str(tmp_path))
    with Image.open(local) as image:
        assert image.size == (900, 320)


def test_one_evaluation_is_said_in_the_singular():
    """Seen on the run page of a 1-epoch trial: "Learning curves (1 evaluations)"."""
    assert "(1 evaluation)" in describe({"test/f1_weighted": 0.5}, "lsd", 1)
    assert "(2 evaluations)" in describe({"test/f1_weighted": 0.5}, "lsd", 2)
