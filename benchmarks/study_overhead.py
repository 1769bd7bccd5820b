"""Per-trial overhead of the study runner, measured against bare ``run()`` calls.

The same N small trials (tiny phantom, LSD, 32 px, 2 epochs), three ways, in one process:

- bare: ``uslearn.strategies.run`` called N times in a loop (no Ray, no MLflow);
- tune: a study of N trials, one at a time, each in a Tune trial process (the CPU path:
  no Ray Train), with MLflow child runs, checkpoints and the final summary;
- ddp: the same study with 2 Ray Train workers per trial (the GPU/DDP path: a TorchTrainer,
  whose worker group starts for every trial).

Prints seconds per trial and the overhead per trial over bare (bare is timed before and after
the studies and averaged, since other jobs on the machine change its speed).

    python benchmarks/study_overhead.py [--trials 4] [--skip-ddp]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

FAST = {"epochs": 2, "batch_exams": 4, "max_images_per_exam": 4, "image_size": 32}


def bare(data: Path, lams: list[float], out: Path) -> float:
    """Return the wall time of the trials run back to back in this process."""
    import torch

    from uslearn.strategies import run

    torch.set_num_threads(1)  # as in a Tune trial process with one CPU (OMP_NUM_THREADS=1)
    start = time.perf_counter()
    for lam in lams:
        config = {"strategy": "lsd", "k": 0, "lam": lam, "device": "cpu", **FAST}
        run(config, data, out_dir=out / f"bare_{lam}")
    return time.perf_counter() - start


def study(data: Path, lams: list[float], out: Path, name: str, *extra: str) -> float:
    """Return the wall time of the same trials as a study (Tune, MLflow, one at a time)."""
    from uslearn.study import StudySpec
    from uslearn.study_cli import main

    spec = StudySpec(
        name=name, title=name, fixed={"strategy": "lsd", "k": 0}, grid={"lam": lams}, seeds=(0,)
    )
    argv = [
        "--profile", "cpu-demo", "--data", str(data), "--no-report", "--max-concurrent", "1",
        "--mlflow", f"sqlite:///{out / 'mlflow.db'}", "--storage", str(out / "studies"),
        *[item for k, v in FAST.items() for item in ("--set", f"{k}={v}")],
        *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    code = main(spec, str(out / f"{name}.py"), argv)
    if code != 0:
        raise SystemExit(f"study {name} failed with exit code {code}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from uslearn.phantom import ensure_phantom

    lams = [0.5 * (i + 1) for i in range(args.trials)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = ensure_phantom(out / "tiny", preset="tiny").root
        bare(data, lams[:1], out)  # warm-up: imports, first-call allocations
        first = bare(data, lams, out)
        ray.init(
            num_cpus=2, include_dashboard=False, resources={"TRAIN_DRIVER": 1}, log_to_driver=False
        )
        times = {"tune": study(data, lams, out, "overhead_tune")}
        if not args.skip_ddp:
            times["ddp"] = study(data, lams, out, "overhead_ddp", "--workers-per-trial", "2")
        ray.shutdown()
        # Bare before and after the studies: the machine's load drifts, the mean is fairer.
        times = {"bare": (first + bare(data, lams, out)) / 2, **times}
    per_bare = times["bare"] / args.trials
    print(
        f"\n{args.trials} trials (tiny phantom, LSD, 32 px, 2 epochs), one at a time, 2 CPU cores"
    )
    print(f"{'path':<6} {'total s':>8} {'s/trial':>8} {'overhead s/trial':>17}")
    for name, total in times.items():
        per = total / args.trials
        print(f"{name:<6} {total:8.1f} {per:8.1f} {per - per_bare:17.1f}")


if __name__ == "__main__":
    main()
