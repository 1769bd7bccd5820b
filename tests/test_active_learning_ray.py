"""The active-learning study end to end on local Ray: one trial of rounds, logged by labels."""

import json

import pytest
from test_study_ray import ray_address, runs_of, tiny  # noqa: F401 (fixtures)

from uslearn.study_cli import load_study, main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_smoke_test_runs_rounds_and_logs_each_at_its_label_count(
    ray_address,  # noqa: F811
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("USLEARN_DATA", str(tiny.parent))  # where --smoke-test looks for "tiny"
    spec, file = load_study("active_learning")
    argv = ["--smoke-test", "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    argv += ["--storage", str(tmp_path / "studies"), "--set", "min_steps=2", "--set", "rounds=2"]
    assert main(spec, file, argv) == 0
    client, _, children = runs_of(tmp_path, "active_learning")
    (child,) = children
    assert child.info.status == "FINISHED" and child.data.params["acquisition"] == "random"
    curve = client.get_metric_history(child.info.run_id, "al/test_f1_weighted")
    labels = client.get_metric_history(child.info.run_id, "al/labels")
    assert [m.step for m in curve] == [int(m.value) for m in labels]
    assert len(curve) == 2 and curve[0].step < curve[1].step
    (state,) = (tmp_path / "studies" / "active_learning").glob("*/outputs/*/rounds.json")
    rounds = json.loads(state.read_text())["rounds"]
    assert [r["labels"] for r in rounds] == [m.step for m in curve]
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
    assert "rounds.json" in artifacts
