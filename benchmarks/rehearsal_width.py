"""The rehearsal at width: ≥ 32 trials at once on the fake multi-node cluster, the MLflow
server killed and started again in the middle; every trial must finish and every trial's
evaluations must be in MLflow exactly once.

    .venv/bin/python benchmarks/rehearsal_width.py [--nodes 8] [--per-node 4] [--epochs 4]
        [--down-s 45] [--no-memory-monitor]

It starts its own rehearsal (cluster/rehearsal.sh: PostgreSQL + MLflow server on the head, a
wider node type, free ports, its own state folder), writes a one-arm LSD study of nodes × per-node trials (λ values × 2 seeds), runs it as a
driver process, kills the server's process group once the first evaluations are in MLflow,
starts it again after ``--down-s`` seconds, and prints: wall time, trials at once, how long
the server was down, trials FINISHED, runs per trial, evaluations expected / found / lost /
duplicated, the peak memory and swap in use, and the trials' "unreachable" / "answers again"
lines.

Memory: every trial process here holds ≈ 0.65–0.8 GB (the CUDA build of torch, torchvision,
MLflow and scikit-learn ≈ 0.5 GB, ResNet18 with its gradients and Adam's moments 0.18 GB), so
32 of them, the fake nodes and the head need ≈ 25 GB: more than a 24 GiB machine has. Ray's
memory monitor then kills trials at 95 % of RAM before the kernel swaps anything; with swap on
the machine, ``--no-memory-monitor`` lets the kernel page out the trials' cold memory instead
(the head's dashboard is off here either way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REHEARSAL = ROOT / "cluster" / "rehearsal.sh"
HEAD_SERVICES = ROOT / "cluster" / "head_services.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wide_config(path: Path, nodes: int, per_node: int) -> Path:
    """Write the rehearsal's autoscaling config with ``nodes`` CPU workers of ``per_node``."""
    config = yaml.safe_load((ROOT / "cluster" / "rehearsal.yaml").read_text())
    types = config["available_node_types"]
    worker = types.pop("gpu_worker")
    worker["resources"] = {"CPU": per_node, "object_store_memory": 100_000_000}
    worker["min_workers"] = nodes  # all at once: the point is width, not autoscaling
    worker["max_workers"] = nodes
    types["cpu_worker"] = worker
    config["max_workers"] = nodes
    config["idle_timeout_minutes"] = 10
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def study_file(folder: Path, lams: list[float], seeds: int) -> Path:
    path = folder / "width.py"
    path.write_text(
        "import sys\n"
        "from uslearn.study import StudySpec\n"
        "from uslearn.study_cli import main\n"
        f"SPEC = StudySpec(name='width', title='the rehearsal at width',\n"
        f"                 fixed={{'strategy': 'lsd', 'k': 0}}, grid={{'lam': {lams!r}}},\n"
        f"                 seeds=tuple(range({seeds})))\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(SPEC, __file__))\n"
    )
    return path


class MemoryWatch:
    """The machine's peak memory in use (total - available) and swap in use, from /proc/meminfo."""

    def __init__(self) -> None:
        self.peak_used_gb = self.peak_swap_gb = 0.0
        self.total_gb = self.meminfo()["MemTotal"]

    @staticmethod
    def meminfo() -> dict[str, float]:
        """Return /proc/meminfo's fields in GiB."""
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) / 2**20
        return fields

    def sample(self) -> None:
        info = self.meminfo()
        self.peak_used_gb = max(self.peak_used_gb, info["MemTotal"] - info["MemAvailable"])
        self.peak_swap_gb = max(self.peak_swap_gb, info["SwapTotal"] - info["SwapFree"])


def count_lines(text: str, needle: str) -> int:
    """Return how many of the trials' lines hold ``needle``, counting Ray's deduplicated ones.

    The driver prints the first of a run of similar worker lines and then one line ending in
    "[repeated Nx across cluster]" for the N others.
    """
    count = 0
    for line in text.splitlines():
        if needle in line:
            repeated = re.search(r"\[repeated (\d+)x across cluster\]", line)
            count += int(repeated.group(1)) if repeated else 1
    return count


def children(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("width")
    if experiment is None:
        return client, []
    found = client.search_runs([experiment.experiment_id], max_results=5000)
    return client, [r for r in found if "mlflow.parentRunId" in r.data.tags]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--per-node", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="evaluations per trial")
    parser.add_argument("--down-s", type=float, default=45.0)
    parser.add_argument(
        "--backend", default="", help="mlflow-start's --backend on restart (default: the head's)"
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument(
        "--no-memory-monitor",
        action="store_true",
        help="turn Ray's memory monitor off (RAY_memory_monitor_refresh_ms=0), so that a machine "
        "with swap pages out the trials' cold memory instead of Ray killing trials at 95 %% of RAM",
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    work = Path(tempfile.mkdtemp(prefix="usl-width-"))
    temp_dir = Path(f"/tmp/usw-{secrets.token_hex(3)}")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "USLEARN_CLUSTER_STATE": str(work / "state"),
        "USLEARN_REHEARSAL_CONFIG": str(wide_config(work / "wide.yaml", args.nodes, args.per_node)),
        "RAY_TEMP_DIR": str(temp_dir),
        "RAY_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PG_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_CLIENT_PORT": str(free_port()),
        "RAY_DASHBOARD_AGENT_PORT": str(free_port()),
        "RAY_AUTH_MODE": "disabled",
        # The head's dashboard processes are not needed here (≈ 0.35 GB of this machine's memory).
        "RAY_INCLUDE_DASHBOARD": "false",
    }
    if args.no_memory_monitor:
        env["RAY_memory_monitor_refresh_ms"] = "0"
    memory = MemoryWatch()
    trials = args.nodes * args.per_node
    # cpu-demo runs 2 seeds: the width comes from λ values (one cell each).
    seeds = 2
    lams = [round(0.5 * (i + 1), 2) for i in range(-(-trials // seeds))]
    up = subprocess.run([str(REHEARSAL), "up"], env=env, capture_output=True, text=True)
    try:
        if up.returncode != 0:
            print(up.stdout + up.stderr)
            return 1
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (work / "state" / "env.sh").read_text().splitlines()
        )
        uri = exports["MLFLOW_TRACKING_URI"]
        # In a child process: torch stays out of this one (≈ 0.3 GB, a trial's worth of memory).
        data = work / "tiny"
        subprocess.run(
            [sys.executable, "-m", "uslearn", "data", "phantom", "--out", str(data),
             "--preset", "tiny", "--seed", "0"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        log_path = work / "study.log"
        argv = [
            sys.executable, str(study_file(work, lams, seeds)),
            "--address", exports["RAY_ADDRESS"], "--mlflow", uri, "--profile", "cpu-demo",
            "--data", str(data), "--storage", str(work / "studies"), "--no-report",
            "--set", "batch_exams=2", "--set", "max_images_per_exam=2", "--set", "image_size=32",
            "--set", f"epochs={args.epochs}", "--max-concurrent", str(trials),
        ]  # fmt: skip
        start = time.monotonic()
        with open(log_path, "w") as handle:
            study = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = start + args.timeout_s
        at_once = 0
        while True:  # until the first evaluations are in MLflow
            _, runs = children(uri)
            at_once = max(at_once, sum(r.info.status == "RUNNING" for r in runs))
            if sum("step" in r.data.metrics for r in runs) >= 2:
                break
            if study.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text()[-4000:])
                return 1
            memory.sample()
            time.sleep(3)
        state = work / "state" / "mlflow"
        pid = int((state / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        (state / "server.pid").unlink()
        killed = time.monotonic()
        while time.monotonic() < killed + args.down_s:  # the server away: sample meanwhile
            memory.sample()
            time.sleep(min(3.0, max(0.0, killed + args.down_s - time.monotonic())))
        restart = [str(HEAD_SERVICES), "mlflow-start", "--host", "127.0.0.1",
                   "--port", env["MLFLOW_PORT"], "--state", str(state),
                   "--artifacts", str(work / "state" / "mlartifacts")]  # fmt: skip
        if args.backend:
            restart += ["--backend", args.backend]
        subprocess.run(restart, env=env, check=True, capture_output=True)
        down = time.monotonic() - killed
        while study.poll() is None:
            _, runs = children(uri)
            at_once = max(at_once, sum(r.info.status == "RUNNING" for r in runs))
            if time.monotonic() > deadline:
                study.kill()
                break
            memory.sample()
            time.sleep(5)
        wall = time.monotonic() - start
        client, runs = children(uri)
        per_trial: dict[str, int] = {}
        for run in runs:
            per_trial[run.data.tags["trial_id"]] = per_trial.get(run.data.tags["trial_id"], 0) + 1
        expected = found = lost = duplicated = 0
        for run in runs:
            folder = Path(run.data.tags["out_dir"])
            history = (
                json.loads((folder / "history.json").read_text())
                if (folder / "history.json").is_file()
                else []
            )
            steps = [int(h["step"]) for h in history]
            logged = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
            expected += len(steps)
            found += len(set(logged))
            lost += len(set(steps) - set(logged))
            duplicated += len(logged) - len(set(logged))
        text = log_path.read_text()
        # Tune's own status lines ("Trial status: 30 RUNNING | 2 TERMINATED") see every trial,
        # also while the server is away and the runs' statuses cannot be read.
        tune_running = [int(n) for n in re.findall(r"Trial status:.*?(\d+) RUNNING", text)]
        at_once = max([at_once, *tune_running])
        print(f"study exit code {study.returncode}; wall {wall:.0f} s; log {log_path}")
        print(
            f"trials {trials} planned, {len(per_trial)} with a run, at most {at_once} RUNNING at once"
        )
        print(f"server down {down:.0f} s (killed with SIGKILL, started again)")
        monitor = "off" if args.no_memory_monitor else "on"
        print(
            f"memory: peak in use {memory.peak_used_gb:.1f} of {memory.total_gb:.1f} GiB, "
            f"peak swap in use {memory.peak_swap_gb:.1f} GiB (Ray's memory monitor {monitor})"
        )
        print(
            f"FINISHED {sum(r.info.status == 'FINISHED' for r in runs)} of {len(runs)} runs; "
            f"runs per trial: max {max(per_trial.values(), default=0)}"
        )
        print(
            f"evaluations: expected {expected}, in MLflow {found}, lost {lost}, duplicated {duplicated}"
        )
        print(
            f"trial lines: 'unreachable' {count_lines(text, ' unreachable (')}, "
            f"'answers again' {count_lines(text, 'answers again')}, "
            f"'not sent' {count_lines(text, 'not sent to MLflow')}"
        )
        passed = study.returncode == 0 and lost == 0 and duplicated == 0 and at_once >= trials
        return 0 if passed else 1
    finally:
        subprocess.run([str(REHEARSAL), "down"], env=env, capture_output=True, text=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
