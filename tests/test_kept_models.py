"""Which trials keep their MLflow model, without Ray: real sqlite MLflow and a real tiny run.

One ``uslearn train --out`` run (tiny phantom, 32 px, 1 epoch, no MLflow) makes the output
folder of a trial whose model was not logged; copies of it stand for the trials of a study,
whose MLflow runs the tests create as ``runner``/``trial`` do (a parent, children tagged with
``study_run_id``, ``cell`` and ``out_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from uslearn.cli import main
from uslearn.study import kept_models
from uslearn.study.logged_models import register_best, run_weights
from uslearn.study.run_model import models_of

TINY = ["--size", "32", "--batch-exams", "16", "--max-images-per-exam", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tiny_phantom, tmp_path_factory) -> Path:
    """Return the output folder of a finished 1-epoch supervised run (a model package)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "--data", str(tiny_phantom), "--strategy", "supervised", "--epochs", "1"]
    args += ["--min-steps", "4"]  # the fine-tuning default is 300 steps: the model is not the point
    assert main([*args, "--out", str(out), *TINY]) == 0
    assert (out / "best.pt").is_file() and (out / "package.json").is_file()
    return out


class Study:
    """A study invocation's runs in a real MLflow store: a parent and its trials."""

    def __init__(self, tmp_path: Path):
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.root = tmp_path
        self.mlc = mlflow.MlflowClient(self.uri)
        self.exp = self.mlc.create_experiment(
            "probe", artifact_location=(tmp_path / "mlartifacts").as_uri()
        )
        self.parent = self.mlc.create_run(self.exp, run_name="probe").info.run_id

    def trial(self, cell: str, score: float, folder: Path | None, status="FINISHED") -> str:
        """Return the id of a trial run of ``cell`` whose output folder is a copy of ``folder``."""
        tags = {"mlflow.parentRunId": self.parent, "study_run_id": self.parent, "cell": cell}
        run_id = self.mlc.create_run(self.exp, run_name=cell, tags=tags).info.run_id
        out = self.root / "outputs" / run_id
        if folder is not None:
            shutil.copytree(folder, out)
        self.mlc.set_tag(run_id, "out_dir", str(out))
        self.mlc.set_tag(run_id, kept_models.TAG, kept_models.NOT_LOGGED)
        self.mlc.log_metric(run_id, "val/f1_weighted", score)
        self.mlc.set_terminated(run_id, status)
        return run_id

    def models(self) -> dict[str, int]:
        """Return run id -> number of usable logged models, for every trial."""
        runs = self.mlc.search_runs([self.exp], f"tags.study_run_id = '{self.parent}'")
        return {r.info.run_id: len(models_of(self.mlc, r)) for r in runs}


def test_the_best_of_each_cell_is_chosen_by_the_metric_and_its_mode(tmp_path):
    study = Study(tmp_path)
    a_low = study.trial("a", 0.2, None)
    a_high = study.trial("a", 0.8, None)
    study.trial("a", 0.9, None, status="FAILED")  # not finished: never the best
    b_only = study.trial("b", 0.5, None)
    runs = kept_models.finished_children(study.mlc, study.exp, study.parent)
    chosen = kept_models.best_per_cell(runs, "val/f1_weighted", "max")
    assert {c: r.info.run_id for c, r in chosen.items()} == {"a": a_high, "b": b_only}
    chosen = kept_models.best_per_cell(runs, "val/f1_weighted", "min")
    assert {c: r.info.run_id for c, r in chosen.items()} == {"a": a_low, "b": b_only}


def test_the_study_end_logs_one_model_per_cell_once_and_register_best_finds_it(trained, tmp_path):
    study = Study(tmp_path)
    worse = study.trial("lsd lam=2", 0.3, trained)
    best = study.trial("lsd lam=2", 0.6, trained)
    other = study.trial("pica lam=2", 0.4, trained)
    args = (study.uri, study.exp, study.parent, "val/f1_weighted", "max")
    lines = kept_models.log_cell_models(*args)
    assert len(lines) == 2 and all("logged the model of run" in line for line in lines)
    assert study.models() == {worse: 0, best: 1, other: 1}
    tags = {r: study.mlc.get_run(r).data.tags[kept_models.TAG] for r in (worse, best, other)}
    assert tags == {worse: "not_logged", best: "best_of_cell", other: "best_of_cell"}
    # The weights now live in MLflow; the trial that was not chosen keeps its own.
    assert not (tmp_path / "outputs" / best / "best.pt").exists()
    assert (tmp_path / "outputs" / worse / "best.pt").is_file()
    weights = run_weights(study.uri, best, tmp_path / "w")
    assert weights.read_bytes() == (trained / "best.pt").read_bytes()
    # A resumed study runs the same step again: nothing is logged twice.
    assert kept_models.log_cell_models(*args) == []
    assert study.models() == {worse: 0, best: 1, other: 1}
    line = register_best(study.uri, study.parent, "probe-best")
    assert f"run {best}" in line and "models:/probe-best/1" in line
    assert study.models() == {worse: 0, best: 1, other: 1}


def test_a_trial_without_a_model_is_registered_from_its_folder_while_it_exists(
    trained, tmp_path, capsys
):
    study = Study(tmp_path)
    kept = study.trial("lsd", 0.5, trained)
    gone = study.trial("lsd", 0.4, trained)
    register = ["register", "--mlflow", study.uri, "--name", "probe"]
    assert main([*register, "--run", kept]) == 0
    assert f"registered run {kept} as models:/probe/1" in capsys.readouterr().out
    assert study.mlc.get_run(kept).data.tags[kept_models.TAG] == "at_register"
    assert study.mlc.get_model_version("probe", "1").run_id == kept
    # Registering it again makes a new version of the same logged model, not a second model.
    assert main([*register, "--run", kept]) == 0
    assert study.models()[kept] == 1
    capsys.readouterr()  # the second registration's lines
    folder = tmp_path / "outputs" / gone
    shutil.rmtree(folder)
    assert main([*register, "--run", gone]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and gone in err and str(folder) in err
    assert "not kept by the study's --log-models policy" in err and "is gone" in err
    assert study.models()[gone] == 0
    # The folder is there but its weights are not: named too.
    again = study.trial("lsd", 0.1, trained)
    (tmp_path / "outputs" / again / "best.pt").unlink()
    assert main([*register, "--run", again]) == 2
    assert "holds no best.pt" in capsys.readouterr().err
