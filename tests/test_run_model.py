"""A finished run whose MLflow model cannot be logged stays finished and keeps its weights.

A real ``uslearn train --mlflow`` (tiny phantom, 32 px, 1 epoch) on a sqlite store, with the
model logging made to fail the way a full artifact store would.
"""

from __future__ import annotations

import logging

import mlflow

from uslearn.cli import main
from uslearn.inference.package import ModelPackage
from uslearn.study import run_model
from uslearn.study.logged_models import run_weights

TINY = ["--size", "32", "--batch-exams", "4", "--max-images-per-exam", "4", "--device", "cpu"]


def test_a_model_that_cannot_be_logged_leaves_the_run_finished_with_its_weights(
    tiny_phantom, tmp_path, monkeypatch, caplog
):
    def full_store(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_model, "log_model", full_store)
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    args = ["train", "--data", str(tiny_phantom), "--strategy", "supervised", "--epochs", "1"]
    args += ["--min-steps", "4"]  # the fine-tuning default is 300 steps: the model is not the point
    with caplog.at_level(logging.WARNING, logger="uslearn"):
        assert main([*args, "--out", str(out), "--mlflow", uri, *TINY]) == 0
    assert any("its model could not be logged" in r.getMessage() for r in caplog.records)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("uslearn-train").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FINISHED"
    assert "No space left on device" in run.data.tags["model_error"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "metrics.json", "thresholds.json"} <= artifacts
    weights = run_weights(uri, run.info.run_id, tmp_path / "weights")
    assert weights.read_bytes() == (out / "best.pt").read_bytes()
    # --out is still a model package, whatever happened to the MLflow model.
    assert ModelPackage.load(out).strategy == "supervised"
