"""A run's tracking never fails it: the journal, retries, keeping and replaying writes.

Real MLflow: sqlite files in tmp_path, and for the fault cases a real ``mlflow server``
started by cluster/head_services.sh, killed and started again while a run logs to it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uslearn.study import delivery, tracking
from uslearn.study.journal import Journal

ROOT = Path(__file__).resolve().parents[1]
HEAD_SERVICES = ROOT / "cluster" / "head_services.sh"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def quick(monkeypatch):
    """Short retries: one try of MLflow's client, waits of 10 ms."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setattr(delivery, "DURING", delivery.Patience((0.01, 0.01)))
    monkeypatch.setattr(delivery, "AT_END", delivery.Patience((0.01,), final=True))


def _study(uri: str):
    exp_id = tracking.experiment_id(uri, "delivery")
    return exp_id, tracking.start_parent(uri, exp_id, "delivery", {}, {})


def _trial(uri, exp_id, parent, run_dir, trial="t1") -> tracking.TrackedRun:
    return tracking.TrackedRun(
        uri, exp_id, "cell seed=0", {"cell": "cell"}, parent, trial, run_dir=run_dir
    )


def test_a_retried_trial_continues_its_run_from_the_journal_and_logs_each_step_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(uri)
    first = _trial(uri, exp_id, parent, tmp_path / "trial")
    first.log_params({"lam": 2.0}, {"out_dir": str(tmp_path / "trial")})
    for step in (10, 20):
        first.log_metrics({"step": step, "train/loss": 1.0 / step})
    first.log_metrics({"test/f1_weighted": 0.5}, final=True)
    # The trial's process dies before it ends the run; Tune restarts it from its checkpoint
    # at step 10, so step 20 and the final metrics are computed again.
    retry = _trial(uri, exp_id, parent, tmp_path / "trial")
    assert retry.run_id == first.run_id
    retry.log_params({"lam": 2.0})
    retry.log_metrics({"step": 20, "train/loss": 0.05})
    retry.log_metrics({"step": 30, "train/loss": 1.0 / 30})
    retry.log_metrics({"test/f1_weighted": 0.5}, final=True)
    assert retry.finish("FINISHED") == 0
    mlc = tracking.client(uri)
    assert [m.step for m in mlc.get_metric_history(first.run_id, "train/loss")] == [10, 20, 30]
    assert len(mlc.get_metric_history(first.run_id, "test/f1_weighted")) == 1
    run = mlc.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lam": "2.0"}
    assert run.data.tags["out_dir"] == str(tmp_path / "trial")
    assert len(mlc.search_runs([exp_id], "tags.trial_id = 't1'")) == 1


def test_a_create_whose_answer_was_lost_finds_the_run_instead_of_making_a_second(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(uri)
    mlc = tracking.client(uri)
    tags = {"mlflow.parentRunId": parent, "study_run_id": parent, "trial_id": "t1"}
    # What the server holds after it took a create whose answer never came back.
    created = mlc.create_run(exp_id, run_name="cell seed=0", tags=tags).info.run_id
    journal = Journal(tmp_path / "trial")
    journal.append("create", experiment_id=exp_id, run_name="x", tags=tags, time=0)
    journal.mark_creating()
    retry = _trial(uri, exp_id, parent, tmp_path / "trial")
    assert retry.run_id == created
    assert len(mlc.search_runs([exp_id], "tags.trial_id = 't1'")) == 1


def test_a_new_trial_costs_one_request_to_create_its_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(uri)
    calls = []
    from mlflow.tracking import MlflowClient

    for name in ("create_run", "search_runs", "get_run", "update_run", "log_batch"):
        original = getattr(MlflowClient, name)

        def counting(self, *a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(MlflowClient, name, counting)
    # 500 runs already in the experiment: the start must not grow with them.
    mlc = tracking.client(uri)
    for _ in range(5):
        mlc.create_run(exp_id)
    calls.clear()
    trial = _trial(uri, exp_id, parent, tmp_path / "trial")
    assert calls == ["create_run"]
    trial.log_params({"lam": 2.0, "seed": 0}, {"out_dir": "x", "node_id/rank0": "n"})
    assert calls == ["create_run", "log_batch"]


def test_transient_and_permanent_errors_are_told_apart(tmp_path, quick):
    from mlflow.exceptions import MlflowException

    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(MlflowException) as away:
        tracking.client(uri).get_experiment_by_name("x")
    assert delivery.is_transient(away.value)
    assert delivery.is_transient(MlflowException("QueuePool limit of size 5 overflow 10 reached"))
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(sqlite)
    mlc = tracking.client(sqlite)
    run_id = mlc.create_run(exp_id).info.run_id
    mlc.log_param(run_id, "lam", "2")
    with pytest.raises(MlflowException) as changed:
        mlc.log_param(run_id, "lam", "5")
    assert not delivery.is_transient(changed.value)


def test_an_unreachable_server_keeps_the_writes_and_a_replay_sends_each_once(
    tmp_path, quick, caplog
):
    # The trial starts while its server is away: create, params, evaluations, end are kept.
    away = f"http://127.0.0.1:{closed_port()}"
    here = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(here)
    run_dir = tmp_path / "trial"
    with caplog.at_level(logging.WARNING, logger="uslearn"):
        start = time.monotonic()
        trial = _trial(away, exp_id, parent, run_dir)
        trial.log_params({"lam": 2.0})
        for step in (1, 2, 3):
            trial.log_metrics({"step": step, "val/f1_weighted": step / 10})
        trial.log_metrics({"test/f1_weighted": 0.7}, final=True)
        assert trial.finish("FINISHED") == 7
        assert time.monotonic() - start < 30
    lines = [r.getMessage() for r in caplog.records]
    kept = [line for line in lines if f"{away} unreachable" in line]
    assert len(kept) == 1 and str(run_dir / "tracking") in kept[0], lines
    ended = [line for line in lines if "ended with" in line]
    assert len(ended) == 1 and "3 evaluation(s)" in ended[0] and "--resume" in ended[0]
    # The trial's folder says it finished (a resumed study does not run it again)...
    assert Journal(run_dir).end_status == "FINISHED"
    assert Journal(run_dir).final_metrics() == {"test/f1_weighted": 0.7}
    # ...and its writes go, in order and once, to the store that answers (here: sqlite).
    assert delivery.replay(here, run_dir) == 0
    assert delivery.replay(here, run_dir) == 0  # nothing left: nothing sent twice
    mlc = tracking.client(here)
    run_id = Journal(run_dir).run_id
    steps = [m.step for m in mlc.get_metric_history(run_id, "val/f1_weighted")]
    assert steps == [1, 2, 3]
    assert mlc.get_run(run_id).info.status == "FINISHED"
    assert mlc.get_run(run_id).data.tags["trial_id"] == "t1"


def test_a_batch_sent_again_after_a_lost_ack_is_stored_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(uri)
    trial = _trial(uri, exp_id, parent, tmp_path / "trial")
    trial.log_metrics({"step": 1, "train/loss": 0.5})
    trial.log_metrics({"step": 2, "train/loss": 0.25})
    # The process died after the server took step 2 but before the journal recorded it.
    Journal(tmp_path / "trial").mark_sent(1)
    journal = Journal(tmp_path / "trial")
    journal.sent = 2
    (tmp_path / "trial" / "tracking" / "sent").write_text("2")
    assert delivery.replay(uri, tmp_path / "trial") == 0
    history = tracking.client(uri).get_metric_history(trial.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]


def test_a_torn_last_line_of_the_journal_is_ignored(tmp_path):
    journal = Journal(tmp_path)
    journal.append("batch", metrics=[["a", 1.0, 5, 1]])
    with open(journal.path, "a") as handle:
        handle.write('{"seq": 2, "op": "bat')  # killed while appending
    again = Journal(tmp_path)
    assert [e["seq"] for e in again.entries] == [1] and again.last_step == 1


def _start_server(state: Path, port: int) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "MLFLOW_PORT": str(port)}
    subprocess.run(
        [str(HEAD_SERVICES), "mlflow-start", "--state", str(state / "mlflow"),
         "--artifacts", str(state / "artifacts")],
        env=env, check=True, capture_output=True, timeout=240,
    )  # fmt: skip


def _stop_server(state: Path) -> None:
    subprocess.run(
        [str(HEAD_SERVICES), "mlflow-stop", "--state", str(state / "mlflow")],
        check=False, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.server
@pytest.mark.slow
def test_a_run_survives_its_server_killed_and_restarted_and_logs_every_step_once(
    tiny_phantom, tmp_path
):
    """``uslearn train --mlflow`` while its server is killed (SIGKILL) after step 2 and started
    again later: the run goes on, ends FINISHED, and MLflow holds every evaluation once (and the kept model's score once, after them)."""
    port = closed_port()
    uri = f"http://127.0.0.1:{port}"
    _start_server(tmp_path, port)
    log_path = tmp_path / "train.log"
    argv = [
        sys.executable, "-m", "uslearn", "train", "--data", str(tiny_phantom),
        "--strategy", "supervised", "--label-fraction", "1", "--epochs", "3",
        "--eval-steps", "1", "--patience-steps", "1000", "--image-size", "32",
        "--batch-exams", "2", "--max-images-per-exam", "2",
        "--out", str(tmp_path / "run"), "--mlflow", uri, "--verify-data", "none",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with open(log_path, "w") as handle:
        train = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 600
        while "step" not in log_path.read_text() or log_path.read_text().count("step ") < 2:
            assert train.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        pid = int((tmp_path / "mlflow" / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        (tmp_path / "mlflow" / "server.pid").unlink()
        while "unreachable" not in log_path.read_text():
            assert train.poll() is None or "unreachable" in log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        _start_server(tmp_path, port)
        assert train.wait(timeout=900) == 0, log_path.read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
        _stop_server(tmp_path)
    text = log_path.read_text()
    assert "answers again" in text or "write(s) not sent" in text, text[-3000:]
    _start_server(tmp_path, port)
    try:
        run_dir = tmp_path / "run"
        assert delivery.replay(uri, run_dir) == 0
        mlc = tracking.client(uri)
        run = mlc.get_run(Journal(run_dir).run_id)
        history = mlc.get_metric_history(run.info.run_id, "val/f1_weighted")
        evaluated = [int(h["step"]) for h in json.loads((run_dir / "history.json").read_text())]
        # The kept model's score follows the evaluations, at the last one's step, so that it is
        # the run's value of val/f1_weighted (what the UI shows and a search sorts by).
        (final_ts,) = {
            ts
            for entry in Journal(run_dir).entries
            if entry.get("final")
            for key, _, ts, _ in entry["metrics"]
            if key == "val/f1_weighted"
        }
        steps = [m.step for m in history if m.timestamp != final_ts]
        finals = [m for m in history if m.timestamp == final_ts]
        assert sorted(steps) == sorted(set(steps)) == evaluated
        kept = json.loads((run_dir / "metrics.json").read_text())["val/f1_weighted"]
        assert [(m.step, m.value) for m in finals] == [(evaluated[-1], pytest.approx(kept))]
        assert run.data.metrics["val/f1_weighted"] == pytest.approx(kept)
        assert run.info.status == "FINISHED"
        assert "test/f1_weighted" in run.data.metrics
    finally:
        _stop_server(tmp_path)


def test_uslearn_sync_sends_what_runs_kept_and_says_when_nothing_is_left(tmp_path, quick, capsys):
    from uslearn.cli import main

    away = f"http://127.0.0.1:{closed_port()}"
    here = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = _study(here)
    study_storage = tmp_path / "studies" / "x" / "outputs"
    for trial in ("a", "b"):
        run = _trial(away, exp_id, parent, study_storage / trial, trial=trial)
        run.log_metrics({"step": 1, "train/loss": 0.5})
        assert run.finish("FINISHED") > 0
    assert main(["sync", str(tmp_path / "studies"), "--mlflow", here]) == 0
    out = capsys.readouterr().out
    assert out.count(": sent") == 2
    mlc = tracking.client(here)
    for trial in ("a", "b"):
        run_id = Journal(study_storage / trial).run_id
        assert [m.step for m in mlc.get_metric_history(run_id, "train/loss")] == [1]
    assert main(["sync", str(tmp_path / "studies")]) == 0
    assert "nothing to send" in capsys.readouterr().out
    # Without --mlflow the URI the run was logged to is used: still away, one line, exit 1.
    again = _trial(away, exp_id, parent, tmp_path / "c", trial="c")
    again.finish("FINISHED")
    assert main(["sync", str(tmp_path / "c")]) == 2  # the probe: unreachable, in seconds
    assert "unreachable" in capsys.readouterr().err
