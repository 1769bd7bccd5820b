"""``uslearn train`` from the command line: outputs, the per-class table, one MLflow run."""

from __future__ import annotations

import json
import logging
import re

import pytest

from uslearn.cli import main
from uslearn.data.dataset import CLASSES

TINY = ["--size", "32", "--batch-exams", "4", "--max-images-per-exam", "4", "--device", "cpu"]


def test_train_writes_outputs_and_prints_the_per_class_table(tiny_phantom, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tiny_phantom),
            "--strategy",
            "pica",
            "--epochs",
            "1",
            "--lam",
            "1.5",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert all(cls in printed for cls in CLASSES) and "weighted" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["lam"] == 1.5 and config["strategy"] == "pica" and config["image_size"] == 32
    assert (out / "cluster_labels.csv").is_file() and (out / "best.pt").is_file()


def test_train_without_a_bar_prints_step_and_loss_at_a_steady_cadence(
    tiny_phantom, tmp_path, caplog, monkeypatch
):
    """No TTY: a 'step N/T  loss L' line each PROGRESS_EVERY_S between evaluations (issue 21)."""
    from uslearn.strategies import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # every step: the cadence, made testable
    monkeypatch.setenv("USLEARN_PROGRESS", "0")
    args = ["train", "--data", str(tiny_phantom), "--strategy", "supervised", "--epochs", "1"]
    args += ["--min-steps", "12"]  # a line per step: a dozen show the cadence (default 300)
    with caplog.at_level(logging.INFO, logger="uslearn"):
        assert main([*args, "--eval-every", "100", "--out", str(tmp_path / "run"), *TINY]) == 0
    lines = re.findall(r"step (\d+)/(\d+)  loss (\d+\.\d+)", caplog.text)
    steps = [int(step) for step, _, _ in lines]
    assert len(steps) >= 2 and steps == sorted(steps), lines
    assert all(int(total) == int(lines[0][1]) for _, total, _ in lines)


def test_train_logs_one_mlflow_run_with_contract_names(tiny_phantom, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tiny_phantom),
        "--strategy",
        "supervised",
        "--epochs",
        "1",
        "--min-steps",
        "0",
        "--out",
        str(out),
        "--mlflow",
        uri,
    ]
    assert main([*args, *TINY]) == 0
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("uslearn-train").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["strategy"] == "supervised" and run.data.params["init_kind"] == "random"
    assert run.data.params["family"] == "supervised" and "steps" not in run.data.params
    assert run.data.tags["git_sha"] and run.info.status == "FINISHED"
    assert len(run.data.params["dataset_fingerprint"]) == 16
    for name in ("test/f1_weighted", "val/f1_weighted", "test/f1/liver", "train/loss", "best_step"):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"thresholds.json", "per_class.csv", "metrics.json"} <= artifacts


def test_strategy_specific_flag_for_another_strategy_is_a_clear_error(
    tiny_phantom, tmp_path, capsys
):
    code = main(
        [
            "train",
            "--data",
            str(tiny_phantom),
            "--strategy",
            "supervised",
            "--tau",
            "0.9",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "unknown key(s) ['tau']" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "nope"),
                "--strategy",
                "lsd",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no dataset directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["data"], ["train"], ["study"], ["report"]])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: uslearn" in capsys.readouterr().out
