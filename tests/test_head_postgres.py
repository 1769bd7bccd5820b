"""The cluster head's tracking store: PostgreSQL and the MLflow server on it, started and stopped
by cluster/head_services.sh (``pg-start`` / ``pg-stop``, ``mlflow-start --backend postgresql``).

Real Debian PostgreSQL binaries (run as the ``postgres`` user when the tests run as root), a
real ``mlflow server``, and what a run logs read back from PostgreSQL itself. Without the
binaries the tests skip, except under CI (``USLEARN_REQUIRE_POSTGRES=1``, set by .ci/run,
which installs them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# Real PostgreSQL and MLflow servers: make test-cluster (CI), not make test.
pytestmark = [pytest.mark.slow, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[1]
HEAD_SERVICES = str(ROOT / "cluster" / "head_services.sh")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def services(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run head_services.sh with ``args`` (the test's Python as the server's); return the result."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        [HEAD_SERVICES, *args], env=env, capture_output=True, text=True, timeout=300
    )


def postgres_pids(datadir: str) -> set[int]:
    """Return the pids of the postmaster serving ``datadir`` and of its children (backends)."""
    parents = {}
    postmaster = None
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if not entry.name.isdigit() or "State:\tZ" in status:
            continue
        parents[int(entry.name)] = int(status.split("PPid:\t")[1].split()[0])
        if args[0].endswith(b"postgres") and datadir.encode() in args:
            postmaster = int(entry.name)
    if postmaster is None:
        return set()
    return {postmaster} | {pid for pid, parent in parents.items() if parent == postmaster}


def alive(pids: set[int]) -> set[int]:
    """Return those of ``pids`` still running (zombies count as gone)."""
    left = set()
    for pid in pids:
        try:
            if "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
                left.add(pid)
        except OSError:
            continue
    return left


def wait_until(condition, seconds: float) -> None:
    """Poll ``condition()`` every 0.5 s until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {condition.__doc__ or condition}")
        time.sleep(0.5)


def session_alive(sid: int) -> bool:
    """Return whether any process of session ``sid`` (the MLflow server's) is left."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    return True
            except OSError:
                continue
    return False


@pytest.fixture
def head(tmp_path, postgres):
    """Start PostgreSQL and the MLflow server on it; yield (state, URL); stop and delete both."""
    state = tmp_path / "head"
    pg_port, port = str(free_port()), str(free_port())
    try:
        started = services("pg-start", "--state", str(state), "--port", pg_port)
        assert started.returncode == 0, started.stderr
        server = services(
            "mlflow-start", "--host", "127.0.0.1", "--port", port, "--state", str(state),
            "--artifacts", str(tmp_path / "artifacts"), "--backend", "postgresql",
            "--max-trials", "4",
        )  # fmt: skip
        assert server.returncode == 0, server.stderr
        yield state, f"http://127.0.0.1:{port}", server.stdout
    finally:
        services("mlflow-stop", "--state", str(state))
        services("pg-stop", "--state", str(state), "--purge")


def test_a_run_logged_through_the_server_lands_in_postgresql_and_stop_leaves_nothing(head):
    import psycopg
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    state, url, started = head
    assert "store postgresql+psycopg://127.0.0.1:" in started
    assert "2 workers x pool 6+6" in started  # --max-trials 4: min(4 + 8, 40) per worker
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert response.status == 200
    client = MlflowClient(url)
    experiment = client.create_experiment("probe_pg")
    run_id = client.create_run(experiment, run_name="trial").info.run_id
    for step in range(3):
        metrics = [Metric(f"m{i}", step + i / 10, 1_000 + step, step) for i in range(20)]
        client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, "FINISHED")

    # The password never reaches the server's log or argv, only the 0600 URI file.
    uri = (state / "postgres.uri").read_text().strip()
    assert (state / "postgres.uri").stat().st_mode & 0o077 == 0
    password = uri.split(":")[2].split("@")[0]
    assert password not in (state / "server.log").read_text()
    with psycopg.connect(uri.replace("postgresql+psycopg", "postgresql"), connect_timeout=10) as db:
        rows = db.execute(
            "SELECT step, count(*) FROM metrics WHERE run_uuid = %s GROUP BY step ORDER BY step",
            (run_id,),
        ).fetchall()
        status = db.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
    assert rows == [(0, 20), (1, 20), (2, 20)] and status == ("FINISHED",)

    # Starting again changes nothing; stopping twice is fine and leaves no process behind.
    again = services("pg-start", "--state", str(state))
    assert again.returncode == 0 and "already running" in again.stdout
    datadir = (state / "postgres.datadir").read_text().strip()
    sid = int((state / "server.pid").read_text())
    pids = postgres_pids(datadir)
    assert len(pids) > 1 and session_alive(sid)  # the postmaster and its backends
    for _ in range(2):
        assert services("mlflow-stop", "--state", str(state)).returncode == 0
        stopped = services("pg-stop", "--state", str(state))
        assert stopped.returncode == 0, stopped.stderr
    assert not alive(pids) and not session_alive(sid)
    # Data deleted behind the script's back is an error, never a silently empty new store.
    subprocess.run(["rm", "-rf", datadir], check=True)
    gone = services("pg-start", "--state", str(state))
    assert gone.returncode == 1 and "is gone" in gone.stderr, gone.stdout + gone.stderr
    assert gone.stderr.strip().count("\n") == 0 and not Path(datadir).exists()


def test_a_restart_keeps_the_postgresql_store_and_survives_a_killed_postmaster(head, tmp_path):
    from mlflow.tracking import MlflowClient

    state, url, _ = head
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("probe_restart")).info.run_id
    datadir = (state / "postgres.datadir").read_text().strip()
    services("mlflow-stop", "--state", str(state))
    # A killed postmaster leaves its postmaster.pid behind; the next start must not trip on it.
    postmaster = int(Path(datadir, "postmaster.pid").read_text().split()[0])
    pids = postgres_pids(datadir)
    os.kill(postmaster, 9)

    def gone():
        """the killed postmaster's backends exited"""
        return not alive(pids)

    wait_until(gone, 60)
    assert Path(datadir, "postmaster.pid").exists()
    restarted = services("pg-start", "--state", str(state))
    assert restarted.returncode == 0, restarted.stderr
    # No --backend: a state folder with a PostgreSQL store restarts on it, not on a new sqlite.
    port = url.rsplit(":", 1)[1]
    again = services(
        "mlflow-start", "--port", port, "--state", str(state), "--artifacts", str(tmp_path / "a")
    )
    assert again.returncode == 0, again.stderr
    assert "store postgresql" in again.stdout and not (state / "mlflow.db").exists()
    assert client.get_run(run_id).info.run_id == run_id


def test_missing_postgresql_binaries_or_store_fail_with_one_line(tmp_path):
    missing = services("pg-start", "--state", str(tmp_path / "s"), env={"PG_BIN": "/nonexistent"})
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "apt-get install" in missing.stderr
    no_store = services(
        "mlflow-start", "--state", str(tmp_path / "s2"), "--artifacts", str(tmp_path / "a"),
        "--backend", "postgresql", "--port", str(free_port()),
    )  # fmt: skip
    assert no_store.returncode == 1 and "pg-start" in no_store.stderr
    assert no_store.stderr.strip().count("\n") == 0
