"""Faults on the local rehearsal cluster (``make test-cluster``; marker ``cluster``).

The module starts the rehearsal exactly as ``make cluster-up`` does (cluster/rehearsal.sh: a Ray
head with Ray's fake multi-node provider, GPU worker nodes that autoscale from 0, the MLflow
server of cluster/head_services.sh on the head's PostgreSQL), on free ports and in its own
folders, and stops it at the end (PostgreSQL's data deleted). Studies run as separate driver processes against it; faults come from outside: a worker
node's raylet killed by its pid, the driver killed, the MLflow server restarted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
REHEARSAL = ROOT / "cluster" / "rehearsal.sh"
HEAD_SERVICES = ROOT / "cluster" / "head_services.sh"
FAST = ["--set", "batch_exams=4", "--set", "max_images_per_exam=4", "--set", "image_size=32"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres):
    """Start the rehearsal cluster; yield its settings; stop it (everything it started)."""
    state = tmp_path_factory.mktemp("cluster")
    # Ray's socket paths must stay short (sun_path), so its session files go under /tmp.
    temp_dir = Path(f"/tmp/usl-{secrets.token_hex(3)}")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "USLEARN_CLUSTER_STATE": str(state),
        "RAY_TEMP_DIR": str(temp_dir),
        "RAY_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PG_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_CLIENT_PORT": str(free_port()),
        "RAY_DASHBOARD_AGENT_PORT": str(free_port()),
        "RAY_AUTH_MODE": "disabled",
    }
    up = subprocess.run([str(REHEARSAL), "up"], env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # The tracking store is the head's PostgreSQL, as on a cluster (not sqlite).
        assert "store postgresql+psycopg://127.0.0.1:" in up.stdout, up.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (state / "env.sh").read_text().splitlines()
        )
        yield {
            "env": env,
            "state": state,
            "address": exports["RAY_ADDRESS"],
            "mlflow": exports["MLFLOW_TRACKING_URI"],
            "sid": int((state / "ray.sid").read_text()),
            "artifacts": state / "mlartifacts",
        }
    finally:
        down = subprocess.run([str(REHEARSAL), "down"], env=env, capture_output=True, text=True)
        print(down.stdout, down.stderr)
        purge = [str(HEAD_SERVICES), "pg-stop", "--state", str(state / "mlflow"), "--purge"]
        subprocess.run(purge, env=env, capture_output=True, timeout=300)
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_study(tmp_path: Path, name: str, grid: dict | None = None) -> Path:
    """Write a one-arm LSD study file (one cell per grid value, seed 0); return its path."""
    path = tmp_path / f"{name}.py"
    path.write_text(
        "import sys\n"
        "from uslearn.study import StudySpec\n"
        "from uslearn.study_cli import main\n"
        f"SPEC = StudySpec(name={name!r}, title='{name} on the rehearsal cluster',\n"
        f"                 fixed={{'strategy': 'lsd', 'k': 0}}, grid={grid or {}!r}, seeds=(0,))\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(SPEC, __file__))\n"
    )
    return path


def start_study(cluster, study: Path, data: Path, tmp_path: Path, *extra: str):
    """Start the study as its own driver process; return (process, log file)."""
    log = tmp_path / f"{study.stem}.log"
    argv = [
        sys.executable, str(study),
        "--address", cluster["address"],
        "--mlflow", cluster["mlflow"],
        "--profile", "cpu-demo",
        "--data", str(data),
        "--storage", str(tmp_path / "studies"),
        "--no-report",
        *FAST,
        *extra,
    ]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=cluster["env"],
            start_new_session=True,
        )  # fmt: skip
    return process, log


def runs(cluster, study: str):
    """Return (client, parent runs, child runs) of ``study`` on the rehearsal's MLflow server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster["mlflow"])
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return client, [], []
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def wait_for(condition, seconds: float, process=None, log: Path | None = None):
    """Poll ``condition()`` every 2 s until it returns something truthy; return that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"the study exited ({process.returncode}) first:\n{tail}")
        time.sleep(2)
    pytest.fail(f"not within {seconds} s: {condition.__doc__ or condition}")


def finish(process, log: Path, seconds: float) -> None:
    """Wait for the study process to exit 0 (kill it and fail after ``seconds``)."""
    try:
        code = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the study did not end within {seconds} s:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


def session_processes(cluster) -> dict[int, list[bytes]]:
    """Return {pid: argv} of the processes in the rehearsal's Ray session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if os.getsid(int(entry.name)) == cluster["sid"]:
                found[int(entry.name)] = args
        except OSError:
            continue
    return found


def raylet_pid(cluster, node_id: str) -> int:
    """Return the pid of the raylet of Ray node ``node_id`` in the rehearsal's session."""
    for pid, args in session_processes(cluster).items():
        if args[0].endswith(b"raylet/raylet") and f"--node_id={node_id}".encode() in args:
            return pid
    raise AssertionError(f"no raylet of node {node_id} in session {cluster['sid']}")


def assert_each_step_once(client, run, expected_evaluations: int | None = None) -> list[int]:
    """Check a child run's evaluations: steps without gaps or repeats; return them."""
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)), f"{run.info.run_name}: repeated steps {steps}"
    every = steps[0]
    assert steps == list(range(every, every * len(steps) + 1, every)), f"gaps in {steps}"
    if expected_evaluations is not None:
        assert len(steps) == expected_evaluations
    # Final metrics once, at the last evaluation's step.
    finals = client.get_metric_history(run.info.run_id, "test/f1_weighted")
    assert [m.step for m in finals] == [steps[-1]]
    return steps


def test_a_ddp_trial_spreads_over_two_nodes_and_survives_losing_one(
    cluster, tiny_phantom, tmp_path
):
    study = write_study(tmp_path, "probe_node_loss")
    evaluations = 40  # long enough for Ray to notice the dead node mid-trial
    process, log = start_study(
        cluster, study, tiny_phantom, tmp_path,
        "--workers-per-trial", "2", "--num-gpus-per-trial", "2", "--placement", "STRICT_SPREAD",
        "--set", f"epochs={evaluations}",
    )  # fmt: skip

    def first_evaluation():
        """the trial's first evaluation in MLflow"""
        client, _, children = runs(cluster, "probe_node_loss")
        return next((c for c in children if "step" in c.data.metrics), None)

    child = wait_for(first_evaluation, 420, process, log)
    nodes = {child.data.tags["node_id/rank0"], child.data.tags["node_id/rank1"]}
    assert len(nodes) == 2  # STRICT_SPREAD: one worker per node
    # The nodes share one log folder, so one log monitor (the head's) sends each line once:
    # a monitor per node sent it once per node.
    processes = session_processes(cluster).values()
    assert sum(a[0].endswith(b"raylet/raylet") for a in processes) >= 3
    assert sum(any(x.endswith(b"log_monitor.py") for x in a) for a in processes) == 1
    lost = child.data.tags["node_id/rank1"]
    os.kill(raylet_pid(cluster, lost), signal.SIGKILL)
    finish(process, log, 600)

    client, parents, children = runs(cluster, "probe_node_loss")
    (child,) = children
    assert child.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    tags = child.data.tags
    # The worker group was restarted from the trial's checkpoint, away from the dead node.
    assert tags["resumed_from"].endswith("checkpoint")
    assert lost not in {tags["node_id/rank0"], tags["node_id/rank1"]}
    assert tags["worker_nodes"] == "2"
    steps = assert_each_step_once(client, child, evaluations)
    # Tune saw no evaluation twice: restarted from scratch, the first ones would repeat. (It
    # may miss the last ones before the failure: the workers resume from the newest
    # checkpoint on disk, newer than the last report Ray Train committed; MLflow has them.)
    import json

    (results,) = (tmp_path / "studies" / "probe_node_loss").glob("*/*/result.json")
    reported = [json.loads(line).get("step") for line in results.read_text().splitlines()]
    reported = [s for s in reported if s is not None]
    assert reported == sorted(set(reported)) and reported[-1] == steps[-1]
    # Artifacts went through the server to its --artifacts-destination.
    assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = {p.name for p in cluster["artifacts"].rglob(child.info.run_id + "/artifacts/*")}
    assert "metrics.json" in stored
    # The kept weights live once, in the run's logged model, also on the server's store.
    from uslearn.study.logged_models import run_weights

    weights = run_weights(cluster["mlflow"], child.info.run_id, tmp_path / "weights")
    assert weights is not None and weights.stat().st_size > 1_000_000
    on_server = list(cluster["artifacts"].rglob("package/best.pt"))
    assert [p for p in on_server if p.read_bytes() == weights.read_bytes()]


def test_a_killed_driver_resumes_and_runs_every_trial_exactly_once(cluster, tiny_phantom, tmp_path):
    study = write_study(tmp_path, "probe_driver_kill", {"lam": [1.0, 2.0, 5.0]})
    flags = ["--num-gpus-per-trial", "1", "--max-concurrent", "1", "--set", "epochs=2"]
    process, log = start_study(cluster, study, tiny_phantom, tmp_path, *flags)

    def one_finished():
        """a trial FINISHED in MLflow"""
        return [c for c in runs(cluster, "probe_driver_kill")[2] if c.info.status == "FINISHED"]

    finished = wait_for(one_finished, 420, process, log)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(finished) < 3
    before = {c.data.tags["trial_id"]: c.info.end_time for c in finished}

    resumed, log = start_study(cluster, study, tiny_phantom, tmp_path, *flags, "--resume")
    finish(resumed, log, 600)
    client, parents, children = runs(cluster, "probe_driver_kill")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(children) == 3 and len(set(trial_ids)) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    after = {c.data.tags["trial_id"]: c.info.end_time for c in children}
    assert all(after[t] == end for t, end in before.items())  # not run again
    for child in children:
        assert_each_step_once(client, child, 2)
    assert "resumed with: `python" in parents[0].data.tags["mlflow.note.content"]


def test_a_restarted_mlflow_server_loses_no_trial_and_no_metric(cluster, tiny_phantom, tmp_path):
    study = write_study(tmp_path, "probe_server_restart", {"lam": [1.0, 2.0]})
    evaluations = 20
    flags = ["--num-gpus-per-trial", "1", "--set", f"epochs={evaluations}"]
    process, log = start_study(cluster, study, tiny_phantom, tmp_path, *flags)

    def logging_started():
        """a trial logged its first evaluation"""
        children = runs(cluster, "probe_server_restart")[2]
        return any("step" in c.data.metrics for c in children)

    wait_for(logging_started, 420, process, log)
    state = cluster["state"]
    env = cluster["env"]
    port = env["MLFLOW_PORT"]
    stop = [str(HEAD_SERVICES), "mlflow-stop", "--state", str(state / "mlflow")]
    stopped = subprocess.run(stop, env=env, capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    down_at = time.monotonic()
    # Longer than a trial's retries (≈ 15 s): the trials keep their evaluations in their
    # journals meanwhile and send them when the server answers again.
    wait_for(lambda: "unreachable" in log.read_text(), 120, process, log)
    time.sleep(10)
    start = [str(HEAD_SERVICES), "mlflow-start", "--host", "127.0.0.1", "--port", port]
    start += ["--state", str(state / "mlflow"), "--artifacts", str(cluster["artifacts"])]
    started = subprocess.run(start, env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    print(f"MLflow server down for {time.monotonic() - down_at:.0f} s")
    finish(process, log, 600)

    client, parents, children = runs(cluster, "probe_server_restart")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["lam=1 seed=0", "lam=2 seed=0"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_step_once(client, child, evaluations)
    summary = parents[0].data.metrics
    assert {"summary/lam_1/test_f1_mean", "summary/lam_2/test_f1_mean"} <= set(summary)
    text = log.read_text()
    assert "answers again" in text, text[-3000:]
    # Restarted without --backend, the server went back to the head's PostgreSQL: the study's
    # runs and every evaluation are rows of PostgreSQL's tables (no sqlite file appeared).
    assert not (state / "mlflow" / "mlflow.db").exists()
    assert stored_in_postgresql(state, "probe_server_restart") == {
        c.info.run_id: evaluations for c in children
    }


def stored_in_postgresql(state: Path, experiment: str) -> dict[str, int]:
    """Return {child run id: evaluations} of ``experiment`` read from the head's PostgreSQL."""
    import psycopg

    uri = (state / "mlflow" / "postgres.uri").read_text().strip()
    with psycopg.connect(uri.replace("postgresql+psycopg", "postgresql"), connect_timeout=10) as db:
        rows = db.execute(
            "SELECT m.run_uuid, count(*) FROM metrics m"
            " JOIN runs r ON r.run_uuid = m.run_uuid"
            " JOIN experiments e ON e.experiment_id = r.experiment_id"
            " JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'"
            " WHERE e.name = %s AND m.key = 'train/loss' GROUP BY m.run_uuid",
            (experiment,),
        ).fetchall()
    return dict(rows)


def test_an_unreachable_mlflow_fails_in_seconds_before_the_study_touches_ray(
    cluster, tmp_path, capsys
):
    from uslearn.study_cli import load_study, main

    study = write_study(tmp_path, "probe_unreachable")
    spec, file = load_study(str(study))
    wrong = f"http://127.0.0.1:{free_port()}"
    argv = ["--address", cluster["address"], "--mlflow", wrong, "--profile", "cpu-demo"]
    start = time.monotonic()
    assert main(spec, file, [*argv, "--storage", str(tmp_path / "s")]) == 2
    assert time.monotonic() - start < 15
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and wrong in lines[0] and "unreachable" in lines[0]
    import ray

    assert not ray.is_initialized()
