"""MLflow for studies without Ray: the URI probe, links and summaries (child runs and their
journal: test_tracking_delivery.py).

Real MLflow on sqlite files in tmp_path; the probe's servers are real sockets.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from uslearn.errors import UserError
from uslearn.study import StudySpec, tracking_uri
from uslearn.study.runner import summary_metrics
from uslearn.study_cli import main


def closed_port() -> int:
    """Return a local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_the_probe_in_seconds_with_one_line():
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        tracking_uri.probe(uri, timeout_s=3)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and uri in message and "unreachable" in message


def test_a_server_that_never_answers_fails_the_probe_at_its_timeout():
    # Accepts connections (the kernel's backlog) but never answers: a hung or firewalled server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(UserError, match=r"unreachable \(no answer within 2 s\)"):
            tracking_uri.probe(uri, timeout_s=2)
        assert time.monotonic() - start < 8


def test_an_unwritable_sqlite_uri_fails_the_probe(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create"):
        tracking_uri.probe(f"sqlite:///{blocker / 'mlflow.db'}")
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("plain text, not a database " * 100)
    with pytest.raises(UserError, match="cannot be written as an sqlite database"):
        tracking_uri.probe(f"sqlite:///{not_sqlite}")


def test_a_new_sqlite_uri_passes_the_probe_and_leaves_no_file(tmp_path):
    path = tmp_path / "deeper" / "mlflow.db"
    tracking_uri.probe(f"sqlite:///{path}")
    assert path.parent.is_dir() and not path.exists()


def test_a_study_with_an_unreachable_mlflow_fails_before_ray_starts(tmp_path, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    spec = StudySpec(name="probe_fail", title="t", fixed={"strategy": "lsd", "k": 0}, seeds=(0,))
    argv = ["--profile", "cpu-demo", "--mlflow", uri, "--storage", str(tmp_path / "s")]
    argv += ["--data", str(tmp_path / "no-such-dataset")]
    start = time.monotonic()
    assert main(spec, str(tmp_path / "probe_fail.py"), argv) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and uri in err[0]
    import ray

    assert not ray.is_initialized()
    assert not (tmp_path / "s").exists()


def test_uslearn_train_with_an_unreachable_mlflow_fails_in_seconds(tiny_phantom, tmp_path, capsys):
    from uslearn.cli import main as uslearn

    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    argv = ["train", "--data", str(tiny_phantom), "--strategy", "lsd"]
    assert uslearn([*argv, "--out", str(tmp_path / "out"), "--mlflow", uri]) == 2
    assert time.monotonic() - start < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and uri in lines[0]


def test_links_open_the_runs_table():
    url = tracking_uri.runs_table_url("http://127.0.0.1:5000/", "7")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking_uri.ui_hint("http://h:5000", "7") == f"open {url.replace('127.0.0.1', 'h')}"
    local = tracking_uri.ui_hint("sqlite:////x/mlflow.db", "3")
    assert "mlflow ui --backend-store-uri sqlite:////x/mlflow.db" in local
    # The mlflow beside this Python: the line works without activating the environment.
    command = Path(local.split()[0])
    assert command.name == "mlflow" and (command.is_file() or str(command) == "mlflow")
    assert "#/experiments/3/runs?workflowType=machine_learning" in local


def test_summary_metrics_give_mean_and_ci_per_cell_under_valid_keys():
    from mlflow.utils.validation import _validate_metric_name

    frame = pd.DataFrame(
        {
            "cell": ["pica lam=0.5", "pica lam=0.5", "pica lam=0.5", "lsd lam=2", "lsd lam=2"],
            "status": ["ok", "ok", "ok", "ok", "error"],
            "test/f1_weighted": [0.5, 0.6, 0.7, 0.4, math.nan],
        }
    )
    summary = summary_metrics(frame)
    for key in summary:
        _validate_metric_name(key)
    prefix = "summary/pica_lam_0.5/test_f1"
    assert summary[f"{prefix}_mean"] == pytest.approx(0.6)
    assert summary[f"{prefix}_n"] == 3
    # Student t, 2 degrees of freedom: 0.6 ± 4.303 · 0.1 / sqrt(3)
    assert summary[f"{prefix}_ci95_low"] == pytest.approx(0.6 - 4.3027 * 0.1 / 3**0.5, abs=1e-3)
    assert summary[f"{prefix}_ci95_high"] == pytest.approx(0.6 + 4.3027 * 0.1 / 3**0.5, abs=1e-3)
    # One finished seed: a mean and no interval; the errored trial is not counted.
    assert summary["summary/lsd_lam_2/test_f1_n"] == 1
    assert "summary/lsd_lam_2/test_f1_ci95_low" not in summary


def test_the_parent_run_describes_the_study(tmp_path):
    from uslearn.study.runner import Invocation, description
    from uslearn.study.spec import make_plan

    spec = StudySpec(name="described", title="Fig. 9: a title", fixed={"strategy": "lsd"})
    inv = Invocation(
        exp_dir=Path(tmp_path),
        tracking_uri="sqlite:///x",
        data_path=Path(tmp_path),
        fingerprint="f",
        study_file="studies/described.py",
        resume=False,
        max_concurrent=None,
        command="python studies/described.py --seeds 1",
    )
    text = description(make_plan(spec, "cpu-demo"), inv)
    assert "Fig. 9: a title" in text and "`python studies/described.py --seeds 1`" in text


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "--model", "models:/lsd-demo/1", "--data", "{data}", "--out", "{out}/p.csv"],
        ["curate", "--model", "models:/lsd-demo/1", "--data", "{data}", "--out", "{out}/c"],
        ["register", "--run", "0123456789abcdef", "--name", "lsd-demo"],
        ["report", "--study", "lambda_sensitivity", "--out", "{out}/r"],
    ],
    ids=["predict", "curate", "register", "report"],
)
def test_commands_that_read_mlflow_say_unreachable_in_seconds(
    command, tiny_phantom, tmp_path, capsys
):
    from uslearn.cli import main as uslearn

    uri = f"http://127.0.0.1:{closed_port()}"
    argv = [part.format(data=tiny_phantom, out=tmp_path) for part in command]
    start = time.monotonic()
    assert uslearn([*argv, "--mlflow", uri]) == 2
    assert time.monotonic() - start < 15
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and uri in lines[0], lines
    assert "not found" not in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written
