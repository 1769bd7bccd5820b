"""Active-learning rounds without Ray: the oracle, the round loop, resume after a kill."""

import json

import numpy as np
import pytest

from uslearn.config import ConfigError
from uslearn.data.dataset import Dataset
from uslearn.data.splits import labelled_rows
from uslearn.strategies.common import Rows
from uslearn.study import tracking
from uslearn.study.active import ActiveConfig, split_active
from uslearn.study.rounds import STATE, Oracle, run_rounds

# A few optimiser steps per round at 32 px: the mechanics, not the model, are under test.
TRAIN = {
    "strategy": "supervised",
    "init": "random",
    "image_size": 32,
    "batch_exams": 2,
    "max_images_per_exam": 4,
    "epochs": 1,
    "min_steps": 2,
    "eval_steps": 2,
    "patience_steps": 2,
    "device": "cpu",
    "seed": 0,
}


def test_the_oracle_hides_every_pool_label_that_was_not_picked(tiny_phantom):
    data = Dataset.open(tiny_phantom)
    oracle = Oracle(data)
    pool = labelled_rows(data, "labelled")
    picked = pool[:5]
    oracle.reveal(picked)
    view = oracle.view()
    hidden = np.setdiff1d(pool, picked)
    assert (view.labels[hidden] == -1).all()
    assert (view.labels[picked] == data.labels[picked]).all()
    for split in ("val", "test"):  # evaluation keeps its labels
        rows = labelled_rows(data, split)
        assert (view.labels[rows] == data.labels[rows]).all()
    assert data.labels[hidden].min() >= 0  # the dataset itself is untouched
    with pytest.raises(ValueError, match="only for images of the labelled pool"):
        oracle.reveal(labelled_rows(data, "test")[:1])


def test_labelled_ids_restrict_the_labelled_role_and_name_a_bad_line(tiny_phantom, tmp_path):
    data = Dataset.open(tiny_phantom)
    pool = labelled_rows(data, "labelled")
    ids = data.manifest["image_id"].to_numpy()
    good = tmp_path / "ids.txt"
    good.write_text("\n".join(ids[pool[[3, 1]]]) + "\n\n")
    rows = Rows.of(data, 1.0, 0, str(good))
    assert rows.labelled.tolist() == sorted(pool[[3, 1]].tolist())
    assert np.isin(np.setdiff1d(pool, rows.labelled), rows.unlabelled).all()
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{ids[pool[0]]}\n{ids[labelled_rows(data, 'test')[0]]}\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: image id .* is not a labelled image"):
        Rows.of(data, 1.0, 0, str(bad))


def test_active_keys_split_off_and_are_validated():
    train, active = split_active({**TRAIN, "acquisition": "coreset", "rounds": 2})
    assert active == ActiveConfig(acquisition="coreset", rounds=2) and "rounds" not in train
    assert split_active(TRAIN) == (TRAIN, None)
    with pytest.raises(ConfigError, match="needs a deep-clustering model"):
        split_active({"acquisition": "cluster"})
    with pytest.raises(ConfigError, match="without 'acquisition'"):
        split_active({"rounds": 3})
    with pytest.raises(ConfigError, match="leave label_fraction at 1"):
        split_active({"acquisition": "random", "label_fraction": 0.5})


def test_the_estimate_counts_every_round_and_fine_tunings_step_floor():
    from uslearn.study.active import trial_images
    from uslearn.study.resources import images_per_trial

    counts = {"labelled": 600, "unlabelled": 2000, "val": 300, "test": 400}
    config = {**TRAIN, "acquisition": "random", "rounds": 4, "budget": 4}
    one = images_per_trial({**TRAIN, "label_fraction": 16 * 10 / 600}, counts, 10.0)
    four = trial_images(config, counts, 10.0, images_per_trial)
    assert four > one  # four trainings and four scorings of the pool, not one
    longer = trial_images({**config, "min_steps": 300}, counts, 10.0, images_per_trial)
    assert longer > four + 4 * 250 * 2 * 4  # ≥ 250 more steps of 2 exams x 4 frames per round
    assert trial_images(TRAIN, counts, 10.0, images_per_trial) == images_per_trial(
        TRAIN, counts, 10.0
    )


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Return (step, value) of every logged value of ``key``, by step."""
    logged = tracking.client(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in logged)


def test_rounds_resume_after_a_kill_from_the_last_finished_round_and_log_each_once(
    tiny_phantom, tmp_path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "al_test")
    parent = tracking.start_parent(uri, exp, "al_test", {}, {})
    active = ActiveConfig(acquisition="coreset", rounds=3, initial=2, budget=1)
    out = tmp_path / "trial"
    seen: list[dict] = []

    def killed_after_round_1(metrics, checkpoint):
        seen.append(metrics)
        if metrics["al/round"] == 1:
            raise KeyboardInterrupt  # the process dies here, after round 1 was logged

    first = tracking.TrackedRun(uri, exp, "t", {}, parent_id=parent, trial_id="t1", run_dir=out)
    with pytest.raises(KeyboardInterrupt):
        run_rounds(first, TRAIN, active, tiny_phantom, out, killed_after_round_1)
    state = json.loads((out / STATE).read_text())["rounds"]
    assert [r["round"] for r in state] == [0, 1]
    round0_mtime = (out / "round_00" / "metrics.json").stat().st_mtime_ns

    again = tracking.TrackedRun(uri, exp, "t", {}, parent_id=parent, trial_id="t1", run_dir=out)
    assert again.run_id == first.run_id
    final = run_rounds(again, TRAIN, active, tiny_phantom, out, lambda m, c: seen.append(m))
    assert [m["al/round"] for m in seen] == [0, 1, 2]  # round 2 only, after the resume
    assert (out / "round_00" / "metrics.json").stat().st_mtime_ns == round0_mtime
    state = json.loads((out / STATE).read_text())["rounds"]
    assert [r["round"] for r in state] == [0, 1, 2]
    assert [r["picked"] for r in state[:2]] == [r["picked"] for r in state[:2]]
    # Exams picked: 2, then 1 each round; the labels only grow, every round's picks are new.
    picked = [set(r["picked"]) for r in state]
    assert not (picked[0] & picked[1]) and not (picked[2] & (picked[0] | picked[1]))
    assert [r["exams"] for r in state] == [2, 3, 4]
    labels = [r["labels"] for r in state]
    assert labels == sorted(labels) and len(set(labels)) == 3
    # Each round once in MLflow, at its label count.
    curve = history(uri, first.run_id, "al/test_f1_weighted")
    assert [step for step, _ in curve] == labels
    assert [v for _, v in curve] == pytest.approx([r["metrics"]["test/f1_weighted"] for r in state])
    assert final["rounds_done"] == 3 and not any(k.startswith("al/") for k in final)
    assert final["test/f1_weighted"] == state[-1]["metrics"]["test/f1_weighted"]
    # The last round trained on exactly the revealed labels, the file names them.
    ids = (out / "round_02" / "labelled_ids.txt").read_text().split()
    assert set(ids) == picked[0] | picked[1] | picked[2]
    # A run that lost the rounds (e.g. logged elsewhere) gets them replayed from the state.
    fresh = tracking.TrackedRun(uri, exp, "fresh", {})
    run_rounds(fresh, TRAIN, active, tiny_phantom, out, lambda m, c: None)
    assert [s for s, _ in history(uri, fresh.run_id, "al/test_f1_weighted")] == labels
    # A different configuration in the same folder is refused, with the file named.
    with pytest.raises(Exception, match="rounds.json: holds the rounds of another"):
        run_rounds(None, TRAIN, ActiveConfig(rounds=3), tiny_phantom, out, lambda m, c: 0)


def test_the_acquisition_never_receives_labels():
    from dataclasses import fields

    from uslearn.acquisition import Pool

    # Model outputs and exam ids only: a field holding the truth would have to be added here.
    assert {f.name for f in fields(Pool)} == {
        "group",
        "scores",
        "thresholds",
        "features",
        "labelled_features",
        "clusters",
        "cluster_probs",
        "cluster_features",
    }
