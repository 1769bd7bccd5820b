"""Resident memory of a study's trial processes over time, against a plain ``uslearn train``.

Runs a study (default ``lambda_sensitivity``, cpu-demo profile) in a child process with its own
MLflow store and Tune storage in a temporary folder, and every ``--interval`` seconds reads
``/proc/<pid>/smaps_rollup`` of every Ray process that runs a Tune trial (its title names the
trainable: ``ray::ImplicitFunc``) and of the study's driver. Prints one line per sample and, at
the end, per trial process: first, peak and last RSS, its anonymous memory and the growth per
minute. ``--plain`` samples a ``uslearn train`` of the study's first trial config instead.

    python benchmarks/trial_memory.py                                 # 20 trials, 2 at a time
    python benchmarks/trial_memory.py --seeds 1 --max-concurrent 1    # 10 trials, one process
    python benchmarks/trial_memory.py --plain                         # one plain process
    python benchmarks/trial_memory.py --env MALLOC_ARENA_MAX=2 ...    # allocator experiments

Linux only (``/proc``). RSS counts shared file pages (torch's libraries, ≈ 0.4 GB) in every
process; ``anon`` is the process's own heap, which is what grows when memory leaks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from uslearn.study.memory import process_memory

ROOT = Path(__file__).resolve().parents[1]
TRIAL_TITLE = "ray::ImplicitFunc"  # the process title of a Tune function trainable's actor


def command_line(pid: int) -> str:
    """Return the command line (or process title) of ``pid``; empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    """Return the parent pid of ``pid`` (None if it is gone)."""
    try:
        # The command name in field 2 may hold spaces: the fields after its ")" are plain.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def trial_processes(root: int) -> list[int]:
    """Return the pids of the processes under ``root`` that run Tune trials.

    Ray's workers descend from the raylet, which the driver started; other users' Ray
    sessions on the same machine are not counted.
    """
    parents = {
        int(entry.name): parent_of(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
    }

    def under_root(pid: int) -> bool:
        while pid not in (root, None, 0, 1):
            pid = parents.get(pid)
        return pid == root

    return sorted(
        pid for pid in parents if command_line(pid).startswith(TRIAL_TITLE) and under_root(pid)
    )


@dataclass
class Series:
    """The samples of one process: (seconds since start, RSS MiB, anonymous MiB)."""

    role: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def summary(self) -> str:
        """Return the process's lifetime and its peak RSS / anon memory in each third of it.

        A process that grows with every trial it runs has a last third well above its first.
        """
        n = len(self.samples)
        bounds = [0, n // 3, 2 * n // 3, n]
        thirds = [self.samples[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        rss = " → ".join(f"{max(s[1] for s in part):5d}" for part in thirds)
        anon = " → ".join(f"{max(s[2] for s in part):5d}" for part in thirds)
        seconds = self.samples[-1][0] - self.samples[0][0]
        return f"{self.role:<7} {seconds:6.0f} s  peak RSS {rss} MiB  peak anon {anon} MiB"


def sample(child: subprocess.Popen, interval: float, plain: bool) -> dict[int, Series]:
    """Sample the driver (or plain process) and the trial processes until ``child`` exits."""
    series: dict[int, Series] = {}
    start = time.monotonic()
    while child.poll() is None:
        now = time.monotonic() - start
        pids = {child.pid: "plain" if plain else "driver"}
        if not plain:
            pids.update({pid: "trial" for pid in trial_processes(child.pid)})
        line = []
        for pid, role in pids.items():
            memory = process_memory(pid)
            if memory is None:
                continue
            series.setdefault(pid, Series(role)).samples.append((now, memory.rss, memory.anon))
            line.append(f"{role}[{pid}] {memory.rss}/{memory.anon}")
        print(f"{now:7.0f} s  " + "  ".join(line) + "  (RSS/anon MiB)", flush=True)
        time.sleep(interval)
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="lambda_sensitivity", help="a file of studies/")
    parser.add_argument("--seeds", type=int, help="run only the first N seeds")
    parser.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    parser.add_argument("--data", help="dataset directory (default: the demo phantom)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--report", action="store_true", help="also write the analysis report (as `make demo`)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="sample one `uslearn train` of the first trial"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the child process"
    )
    args = parser.parse_args()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.update(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="trial-memory-") as tmp:
        data = args.data or str(ROOT / "data" / "demo")
        if args.plain:
            command = plain_train_command(args.study, data, args.set, Path(tmp))
        else:
            command = [sys.executable, str(ROOT / "studies" / f"{args.study}.py")]
            command += ["--profile", "cpu-demo", "--data", data]
            command += [] if args.report else ["--no-report"]
            command += ["--mlflow", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/studies"]
            if args.seeds:
                command += ["--seeds", str(args.seeds)]
            if args.max_concurrent:
                command += ["--max-concurrent", str(args.max_concurrent)]
            command += [item for pair in args.set for item in ("--set", pair)]
        if not Path(data, "meta.json").is_file() and args.data is None:
            from uslearn.phantom import ensure_phantom

            ensure_phantom(data, preset="demo")
        print("running:", " ".join(command), flush=True)
        started = time.monotonic()
        with open(Path(tmp) / "child.log", "w") as log:
            child = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=log)
            series = sample(child, args.interval, args.plain)
        wall = time.monotonic() - started
        if child.returncode != 0:
            print((Path(tmp) / "child.log").read_text()[-4000:])
            print(f"the child exited with {child.returncode}")
            return 1
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min); load average {os.getloadavg()}")
    for pid, one in series.items():
        print(f"pid {pid:<8} " + one.summary())
    return 0


def plain_train_command(study: str, data: str, sets: list[str], out: Path) -> list[str]:
    """Return the `uslearn train` command of the study's first trial under the cpu-demo profile."""
    sys.path.insert(0, str(ROOT / "studies"))
    spec = __import__(study).SPEC
    from uslearn.study.profiles import PROFILES
    from uslearn.study.spec import plan_study

    plan = plan_study(spec, PROFILES["cpu-demo"])
    first = plan.trial_config({"cell": plan.cells[0].name, "seed": plan.seeds[0]})
    first.update(item.split("=", 1) for item in sets)
    command = [sys.executable, "-m", "uslearn", "train", "--data", data, "--out", str(out / "run")]
    for key, value in first.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


if __name__ == "__main__":
    sys.exit(main())
