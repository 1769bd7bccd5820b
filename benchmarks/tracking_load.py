"""Tracking under load: W concurrent trial writers against a head's MLflow server.

Each writer does what a study trial does through ``uslearn.study.tracking.TrackedRun`` (with a
parent run and a trial id): create its child run, log its params, then N evaluations, each one
``log_metrics`` of 20 metrics at its step, then the final metrics and ``finish``. Two modes:

- realistic: one evaluation per ``--interval`` s (5) per trial, every trial starting at once;
- back-to-back: the evaluations as fast as the server answers.

The heads are started by ``cluster/head_services.sh`` (sqlite, and PostgreSQL + ``mlflow-start
--backend postgresql``), each on free ports of 127.0.0.1 with its state in a temporary folder,
sized with ``--max-trials`` = the widest W unless ``--server-workers`` says otherwise, and
stopped (PostgreSQL's data deleted) at the end, also on failure. Writers are threads of
``spawn``-ed processes (``--threads`` per process, as many processes as needed, started once),
released together at one wall-clock instant. Afterwards every run's metric history is read
back from the server: a *lost* step is one a writer sent that has not landed, a *duplicated*
step one that landed more than once.

    python benchmarks/tracking_load.py [--writers 8,32,64,128] [--modes realistic,back-to-back]
        [--backends sqlite,postgresql] [--evaluations 10] [--interval 5] [--server-workers 1,4]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD_SERVICES = str(ROOT / "cluster" / "head_services.sh")
KEYS = ["step", *[f"load/metric_{i:02d}" for i in range(19)]]  # 20 metrics per evaluation
PARAMS = {f"param_{i:02d}": i for i in range(40)}
MODES = ("realistic", "back-to-back")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def services(*args: str) -> str:
    """Run head_services.sh; return its output (raise SystemExit with it on failure)."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [HEAD_SERVICES, *args], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"head_services.sh {args[0]} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Head:
    """A head's MLflow server (and PostgreSQL) in a temporary folder, stopped on exit."""

    def __init__(self, backend: str, max_trials: int, workers: int | None):
        self.backend, self.max_trials, self.workers = backend, max_trials, workers
        self.folder = Path(tempfile.mkdtemp(prefix="tracking-load-"))
        self.state = self.folder / "head"
        self.url = ""
        self.line = ""

    def __enter__(self) -> Head:
        sizing = ["--max-trials", str(self.max_trials)]
        if self.workers is not None:
            sizing += ["--workers", str(self.workers)]
        try:
            if self.backend == "postgresql":
                services(
                    "pg-start", "--state", str(self.state), "--port", str(free_port()), *sizing
                )
            port = free_port()
            self.line = services(
                "mlflow-start", "--host", "127.0.0.1", "--port", str(port),
                "--state", str(self.state), "--artifacts", str(self.folder / "artifacts"),
                "--backend", self.backend, *sizing,
            )  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_) -> None:
        env = {**os.environ, "PYTHON": sys.executable}
        for args in (("mlflow-stop",), ("pg-stop", "--purge")):
            subprocess.run(
                [HEAD_SERVICES, args[0], "--state", str(self.state), *args[1:]],
                env=env, capture_output=True, timeout=300,
            )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def one_trial(url, exp_id, parent_id, trial, evaluations, interval, go, deadline) -> dict:
    """Run one trial's logging; return its record (timings, errors, steps sent)."""
    from uslearn.study.tracking import TrackedRun

    record = {"trial": trial, "create_s": None, "create_error": None, "log_s": [], "errors": []}
    record["sent"] = []
    record["late_s"] = time.time() - go
    start = time.monotonic()
    try:
        run = TrackedRun(
            url, exp_id, f"trial {trial}", {"study": "tracking_load", "cell": "load"},
            parent_id=parent_id, trial_id=f"trial_{trial:04d}",
        )  # fmt: skip
    except Exception as err:
        record["create_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        return record
    created = time.monotonic()
    record["create_s"] = created - start

    def call(fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:
            record["errors"].append(f"{fn.__name__}: {type(err).__name__}: {str(err)[:200]}")
            return False

    call(run.log_params, PARAMS)
    for step in range(1, evaluations + 1):
        if interval:  # evaluation k at k intervals after the trial's start (no drift)
            time.sleep(max(0.0, created + step * interval - time.monotonic()))
        if time.time() > deadline:
            break
        metrics = {key: step + i / 100 for i, key in enumerate(KEYS)}
        metrics["step"] = step
        record["sent"].append(step)  # sent even if the call raises: it may have landed
        before = time.monotonic()
        call(run.log_metrics, metrics)
        record["log_s"].append(time.monotonic() - before)
    call(run.log_metrics, {"test/f1_weighted": 0.5, "test/loss": 1.0}, final=True)
    record["kept"] = 0

    def finish() -> None:
        # The client keeps what the server did not take (its journal) instead of raising.
        record["kept"] = run.finish("FINISHED") or 0

    call(finish)
    return record


def process_task(url, exp_id, parent_id, trials, evaluations, interval, go, deadline) -> list:
    """Run ``trials`` as threads released together at wall time ``go``; return their records."""
    records = [None] * len(trials)

    def thread(index: int, trial: int) -> None:
        time.sleep(max(0.0, go - time.time()))
        records[index] = one_trial(
            url, exp_id, parent_id, trial, evaluations, interval, go, deadline
        )

    threads = [threading.Thread(target=thread, args=(i, t)) for i, t in enumerate(trials)]
    for item in threads:
        item.start()
    for item in threads:
        item.join()
    return records


def warm(_: int) -> int:
    """Import the client once in a pool process (so that no config pays for it)."""
    import mlflow.tracking  # noqa: F401

    import uslearn.study.tracking  # noqa: F401

    return os.getpid()


def read_back(url: str, exp_id: str, parent_id: str) -> dict[str, list]:
    """Return {trial id: [per run: {key: [steps]}]} of the parent's child runs on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id], f"tags.study_run_id = '{parent_id}'", max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break

    def history(run) -> tuple[str, dict]:
        steps = {
            key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in KEYS
        }
        return run.data.tags.get("trial_id", "?"), steps

    found: dict[str, list] = {}
    with ThreadPoolExecutor(8) as pool:
        for trial_id, steps in pool.map(history, runs):
            found.setdefault(trial_id, []).append(steps)
    return found


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def run_config(pool, procs, url, backend, mode, writers, args) -> dict:
    """Run one (backend, W, mode) load; return its row of the table."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    name = f"load_{mode}_{writers}_{time.strftime('%H%M%S')}"
    exp_id = client.create_experiment(name)
    parent_id = client.create_run(exp_id, run_name=name, tags={"study": name}).info.run_id
    interval = args.interval if mode == "realistic" else 0.0
    go = time.time() + 3.0  # the pool's processes are warm: 3 s reach every one of them
    budget = args.evaluations * interval + args.grace
    deadline = go + budget
    chunks = [list(range(i, writers, procs)) for i in range(min(procs, writers))]
    task = [(url, exp_id, parent_id, c, args.evaluations, interval, go, deadline) for c in chunks]
    pending = pool.starmap_async(process_task, task, chunksize=1)
    try:
        records = [r for chunk in pending.get(timeout=budget + 600) for r in chunk]
    except multiprocessing.TimeoutError:
        raise SystemExit(
            f"{backend} W={writers} {mode}: writers hung past {budget + 600:.0f} s"
        ) from None
    wall = max(time.time() - go, 0.0)
    late = max(r["late_s"] for r in records)
    if late > 2.0:  # the writers did not all start at once: say so next to the row
        print(f"    {backend} W={writers} {mode}: the last writer started {late:.1f} s late")
    found = read_back(url, exp_id, parent_id)
    client.set_terminated(parent_id, "FINISHED")

    lost = duplicated = duplicate_runs = 0
    for record in records:
        runs = found.get(f"trial_{record['trial']:04d}", [])
        duplicate_runs += max(0, len(runs) - 1)
        if record["create_error"] is not None:
            continue
        landed = [Counter(step for run in runs for step in run[key]) for key in KEYS]
        lost += sum(1 for step in record["sent"] if any(c[step] == 0 for c in landed))
        duplicated += sum(1 for step in record["sent"] if any(c[step] > 1 for c in landed))
    created = [r["create_s"] for r in records if r["create_s"] is not None]
    logs = [s for r in records for s in r["log_s"]]
    errors = [e for r in records for e in r["errors"]]
    failed_creations = [r["create_error"] for r in records if r["create_error"] is not None]
    for text in Counter(errors + failed_creations).most_common(3):
        print(f"    {backend} W={writers} {mode}: {text[1]} x {text[0]}", flush=True)
    return {
        "backend": backend,
        "W": writers,
        "mode": mode,
        "failed calls": len(errors),
        "failed creations": len(failed_creations),
        "duplicate runs": duplicate_runs,
        "lost steps": lost,
        "duplicated steps": duplicated,
        "unsent steps": sum(args.evaluations - len(r["sent"]) for r in records if r["create_s"]),
        "kept writes": sum(r.get("kept", 0) for r in records),
        "log p50 s": percentile(logs, 50),
        "log p99 s": percentile(logs, 99),
        "create p50 s": percentile(created, 50),
        "create p99 s": percentile(created, 99),
        "wall s": wall,
    }


COLUMNS = [
    "backend", "server", "W", "mode", "failed calls", "failed creations", "duplicate runs",
    "lost steps", "duplicated steps", "unsent steps", "kept writes", "log p50 s", "log p99 s", "create p50 s",
    "create p99 s", "wall s",
]  # fmt: skip


def print_row(row: dict, header: bool = False) -> None:
    cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
    if header:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    words = lambda text: text.split(",")  # noqa: E731
    parser.add_argument("--writers", type=ints, default=[8, 32, 64, 128])
    parser.add_argument("--modes", type=words, default=list(MODES))
    parser.add_argument("--backends", type=words, default=["sqlite", "postgresql"])
    parser.add_argument("--evaluations", type=int, default=10, help="per trial")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="s between evaluations (realistic)"
    )
    parser.add_argument(
        "--server-workers", type=ints, default=None,
        help="MLflow server workers, one head each (default: head_services.sh's sizing)",
    )  # fmt: skip
    parser.add_argument("--max-trials", type=int, default=None, help="sizing (default: max W)")
    parser.add_argument("--threads", type=int, default=8, help="writer threads per process")
    parser.add_argument(
        "--grace", type=float, default=240.0, help="s past the schedule to stop sending"
    )
    args = parser.parse_args()
    bad = set(args.modes) - set(MODES) or set(args.backends) - {"sqlite", "postgresql"}
    if bad:
        parser.error(f"unknown mode or backend: {', '.join(sorted(bad))}")

    from uslearn.study.tracking import git_sha

    # No "View run at" link per finished parent run (the pool's processes inherit it too).
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

    procs = math.ceil(max(args.writers) / args.threads)
    max_trials = args.max_trials or max(args.writers)
    print(f"client: uslearn {git_sha()}; {procs} writer processes x {args.threads} threads; "
          f"{args.evaluations} evaluations per trial; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    rows = []
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(warm, range(procs), chunksize=1)
        for backend in args.backends:
            for workers in args.server_workers or [None]:
                with Head(backend, max_trials, workers) as head:
                    print(f"  {head.line}", flush=True)
                    server = head.line.split(", ")[2].split(",")[0]  # "N workers x pool a+b"
                    for mode in args.modes:
                        for writers in args.writers:
                            row = run_config(pool, procs, head.url, backend, mode, writers, args)
                            row["server"] = server
                            print_row(row, header=not rows)
                            rows.append(row)
    print()
    for index, row in enumerate(rows):
        print_row(row, header=index == 0)


if __name__ == "__main__":
    main()
