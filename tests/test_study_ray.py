"""Mini-studies on the tiny phantom through real Ray (2 CPUs) and real MLflow (sqlite).

One local Ray for the module; every study gets its own MLflow store and Tune storage under
tmp_path. The strategies, the phantom and the analysis report are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from uslearn.study import StudySpec
from uslearn.study.logged_models import run_weights
from uslearn.study.run_model import models_of
from uslearn.study.storage import weights_bytes
from uslearn.study_cli import load_study, main

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FAST = ["--set", "epochs=2", "--set", "batch_exams=4", "--set", "max_images_per_exam=4"]


@pytest.fixture(scope="module")
def ray_address():
    import ray

    # address="local": a new Ray of its own, even when another one runs on this machine.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        resources={"TRAIN_DRIVER": 1},
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from uslearn.phantom import ensure_phantom

    return ensure_phantom(tmp_path_factory.mktemp("data") / "tiny", preset="tiny").root


def probe_spec(name: str, arms: dict, grid: dict, seeds=(0, 1)) -> StudySpec:
    """Return a clustering mini-study (k from label combinations, α as in the paper)."""
    return StudySpec(
        name=name, title=f"{name} test", fixed={"k": 0}, arms=arms, grid=grid, seeds=seeds
    )


def study_argv(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    """Return the flags that point a study at tmp_path's MLflow and Tune storage."""
    return [
        "--profile", "cpu-demo",
        "--data", str(data),
        "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--storage", str(tmp_path / "studies"),
        *FAST,
        *extra,
    ]  # fmt: skip


def runs_of(tmp_path: Path, study: str) -> tuple[object, list, list]:
    """Return (client, parent runs, child runs) of ``study`` in tmp_path's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def results(tmp_path: Path, study: str) -> pd.DataFrame:
    """Return results.csv of the study's only invocation."""
    (path,) = (tmp_path / "studies" / study).glob("*/results.csv")
    return pd.read_csv(path)


def test_a_grid_study_logs_one_parent_and_one_named_child_per_trial(
    ray_address, tiny, tmp_path, capsys
):
    spec = probe_spec(
        "probe_grid", {"pica": {"strategy": "pica"}, "lsd": {"strategy": "lsd"}}, {"lam": [2.0]}
    )
    assert main(spec, str(tmp_path / "probe_grid.py"), study_argv(tmp_path, tiny)) == 0
    client, parents, children = runs_of(tmp_path, "probe_grid")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (parent,) = parents
    assert parent.info.run_name == "probe_grid" and parent.info.status == "FINISHED"
    for tag in ("git_sha", "dataset_fingerprint", "uslearn_version", "study_file"):
        assert parent.data.tags[tag]
    assert parent.data.tags["study"] == "probe_grid" and parent.data.tags["profile"] == "cpu-demo"
    names = sorted(r.info.run_name for r in children)
    assert names == [
        "lsd lam=2 seed=0",
        "lsd lam=2 seed=1",
        "pica lam=2 seed=0",
        "pica lam=2 seed=1",
    ]
    fingerprint = parent.data.tags["dataset_fingerprint"]
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == tags["study_run_id"] == parent.info.run_id
        assert tags["study"] == "probe_grid" and child.info.status == "FINISHED"
        assert params["lam"] == "2.0" and params["init_kind"] == "random"
        assert params["family"] == "clustering" and ("alpha" in params) == (
            tags["cell"].startswith("lsd")
        )
        assert params["dataset_fingerprint"] == fingerprint and params["profile"] == "cpu-demo"
        assert params["image_size"] == "32" and params["epochs"] == "2"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/f1_weighted")]
        # One point per evaluation; the final (kept-model) value restates the last step.
        assert steps == sorted(steps) and len(set(steps)) == len(steps) - 1 >= 2
        assert 0 <= child.data.metrics["test/f1_weighted"] <= 1
        assert "test/f1/liver" in child.data.metrics and "test/nmi" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "per_class.csv", "cluster_labels.csv"} <= artifacts
        # The kept weights are stored once: in a logged model or the trial's folder.
        assert "best.pt" not in artifacts and "model_error" not in tags
        weights = run_weights(uri, child.info.run_id, tmp_path / "weights" / child.info.run_id)
        # What --dry-run plans with: a real trial's best.pt (its heads and config aside).
        assert weights.name == "best.pt" and abs(weights.stat().st_size - weights_bytes()) < 2e4
    # The default --log-models best: one model per cell, that of its best trial by the metric.
    for cell in ("pica lam=2", "lsd lam=2"):
        group = [c for c in children if c.data.tags["cell"] == cell]
        logged = [c for c in group if models_of(client, c)]
        assert len(logged) == 1 and len(models_of(client, logged[0])) == 1
        best = max(c.data.metrics["val/f1_weighted"] for c in group)
        assert logged[0].data.metrics["val/f1_weighted"] == best
        for child in group:
            kept = child is logged[0]
            assert child.data.tags["model_logged"] == ("best_of_cell" if kept else "not_logged")
            out_dir = Path(child.data.tags["out_dir"])
            # The others keep their weights (and package.json) for `uslearn register`.
            assert (out_dir / "best.pt").is_file() != kept and (out_dir / "package.json").is_file()
    # Finished trials keep no checkpoint.
    (outputs,) = (tmp_path / "studies" / "probe_grid").glob("*/outputs")
    assert len(list(outputs.glob("*/metrics.json"))) == 4 and not list(outputs.rglob("checkpoint*"))
    assert len(list(outputs.glob("*/best.pt"))) == 2
    table = results(tmp_path, "probe_grid")
    assert sorted(zip(table["cell"], table["seed"])) == [
        ("lsd lam=2", 0),
        ("lsd lam=2", 1),
        ("pica lam=2", 0),
        ("pica lam=2", 1),
    ]
    assert (table["status"] == "ok").all()
    out = capsys.readouterr().out
    assert "best / mean over seeds per cell" in out and "report: " in out
    assert "written: MLflow artifacts" in out and "(2 model(s) " in out
    assert "trial folders " in out and "(2 best.pt of trials whose model is not logged" in out
    (report,) = (tmp_path / "studies" / "probe_grid").glob("*/report/report.html")
    assert report.is_file()


def kill_at_first_checkpoint(trial_dir_glob: str, root: Path, killed: list, deadline_s: float):
    """Wait for Tune to persist a trial's first checkpoint, then SIGKILL the trial's process.

    Tune writes each report to the trial's result.json with the pid of the process that
    reported it; the checkpoint folder beside it appears when Tune has registered it.
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not killed:
        for trial_dir in root.glob(trial_dir_glob):
            results = trial_dir / "result.json"
            lines = results.read_text().splitlines() if results.is_file() else []
            if not (any(trial_dir.glob("checkpoint_*")) and lines):
                continue
            try:  # Tune may be writing the line right now: read it again on the next poll
                pid = json.loads(lines[0])["pid"]
            except json.JSONDecodeError:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


# Ray's fault tolerance and Ray Train worker groups (≈ 25–30 s each): make test-cluster.
@pytest.mark.cluster
def test_a_trial_whose_process_dies_is_retried_from_its_checkpoint(ray_address, tiny, tmp_path):
    spec = probe_spec("probe_crash", {"lsd": {"strategy": "lsd"}}, {}, seeds=(0,))
    # 6 short epochs leave the killer time to act after the first checkpoint.
    argv = study_argv(tmp_path, tiny, "--no-report", "--set", "epochs=6")
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_at_first_checkpoint,
        args=("probe_crash/*/lsd_seed=0", tmp_path / "studies", killed, 300.0),
        daemon=True,
    )
    killer.start()
    assert main(spec, str(tmp_path / "probe_crash.py"), argv) == 0
    killer.join(timeout=1)
    assert killed, "the trial's process was not killed before the study ended"
    _, _, children = runs_of(tmp_path, "probe_crash")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    (result_file,) = (tmp_path / "studies" / "probe_crash").glob("*/lsd_seed=0/result.json")
    steps = [json.loads(line).get("step") for line in result_file.read_text().splitlines()]
    evaluations = [s for s in steps if s is not None]
    # Restarted from scratch, the first evaluation's step would appear twice.
    assert evaluations == sorted(set(evaluations)) and len(evaluations) == 6


# Ray's fault tolerance and Ray Train worker groups (≈ 25–30 s each): make test-cluster.
@pytest.mark.cluster
def test_a_killed_study_resumes_without_rerunning_finished_trials(ray_address, tiny, tmp_path):
    study_file = tmp_path / "probe_resume.py"
    study_file.write_text(
        "import sys\n"
        "from uslearn.study import StudySpec\n"
        "from uslearn.study_cli import main\n"
        "SPEC = StudySpec(name='probe_resume', title='resume test', fixed={'k': 0, 'strategy': 'lsd'},\n"
        "                 grid={'lam': [1.0, 2.0, 5.0]}, seeds=(0,))\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(SPEC, __file__))\n"
    )
    argv = study_argv(tmp_path, tiny, "--no-report", "--max-concurrent", "1")
    driver = subprocess.Popen(
        [sys.executable, str(study_file), "--address", ray_address, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    finished, deadline = [], time.monotonic() + 150
    try:
        while not finished and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1.0)
            # A trial writes metrics.json when it ends; only then read MLflow, whose tables the
            # driver created long before (two processes creating them at once would clash).
            if any((tmp_path / "studies").glob("probe_resume/*/outputs/*/metrics.json")):
                children = runs_of(tmp_path, "probe_resume")[2]
                finished = [c for c in children if c.info.status == "FINISHED"]
        assert finished, "no trial finished before the deadline"
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert len(finished) < 3
    before = {c.data.tags["trial_id"]: c.info.end_time for c in finished}

    spec, file = load_study(str(study_file))
    assert main(spec, file, [*argv, "--resume"]) == 0
    client, parents, children = runs_of(tmp_path, "probe_resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(children) == 3 and len(set(trial_ids)) == 3
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.info.run_name, c.info.status) for c in children
    ]
    after = {c.data.tags["trial_id"]: c.info.end_time for c in children}
    assert all(after[t] == end for t, end in before.items())  # finished trials did not run again
    # One seed per cell: every trial is the best of its cell, and its model is logged once.
    assert [len(models_of(client, c)) for c in children] == [1, 1, 1]
    assert sorted(results(tmp_path, "probe_resume")["cell"]) == ["lam=1", "lam=2", "lam=5"]


def test_smoke_test_runs_one_trial_of_the_first_cell_on_the_tiny_phantom(
    ray_address, tiny, tmp_path, monkeypatch
):
    monkeypatch.setenv("USLEARN_DATA", str(tiny.parent))  # where --smoke-test looks for "tiny"
    spec, file = load_study("lambda_sensitivity")
    argv = ["--smoke-test", "--no-report", "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    argv += ["--log-models", "all"]
    assert main(spec, file, [*argv, "--storage", str(tmp_path / "studies")]) == 0
    client, _, children = runs_of(tmp_path, "lambda_sensitivity")
    (child,) = children
    assert child.info.run_name == "pica lam=0.5 seed=0" and child.data.params["epochs"] == "1"
    assert "steps" not in child.data.params  # PICA runs for epochs; it logs no steps
    # --log-models all: the trial logged its model itself and kept no weights on disk.
    assert child.data.tags["model_logged"] == "all" and len(models_of(client, child)) == 1
    assert not (Path(child.data.tags["out_dir"]) / "best.pt").exists()


# Ray's fault tolerance and Ray Train worker groups (≈ 25–30 s each): make test-cluster.
@pytest.mark.cluster
def test_a_two_worker_trial_runs_as_a_ddp_train_job(ray_address, tiny, tmp_path):
    spec = probe_spec("probe_ddp", {"lsd": {"strategy": "lsd"}}, {}, seeds=(0,))
    argv = study_argv(
        tmp_path, tiny, "--no-report", "--workers-per-trial", "2", "--set", "epochs=1"
    )
    argv += ["--log-models", "none"]
    assert main(spec, str(tmp_path / "probe_ddp.py"), argv) == 0
    client, _, children = runs_of(tmp_path, "probe_ddp")
    (child,) = children  # only rank 0 logs
    assert child.data.params["workers"] == "2" and child.info.status == "FINISHED"
    # --log-models none: no model, even of the best trial; its weights stay in its folder.
    assert child.data.tags["model_logged"] == "not_logged" and not models_of(client, child)
    assert (Path(child.data.tags["out_dir"]) / "best.pt").is_file()
    assert any((tmp_path / "studies" / "probe_ddp").glob("*/train/*"))


def sample_trial_memory(study_dir: Path, samples: list, stop: threading.Event) -> None:
    """Append (trials started, trial pids, anon MiB) every 0.2 s until ``stop`` is set.

    Tune writes each report to the trial's result.json with the pid of the process that
    reported it; a trial counts as started once its result.json exists.
    """
    from uslearn.study.memory import process_memory

    while not stop.is_set():
        pids = set()
        started = list(study_dir.glob("*/*/result.json"))
        for results in started:
            first = results.read_text().split("\n", 1)[0]
            try:  # Tune may be writing the line right now: read it again on the next poll
                pids.add(json.loads(first)["pid"])
            except json.JSONDecodeError:
                continue
        for pid in pids:
            memory = process_memory(pid)
            if memory is not None:
                samples.append((len(started), pid, memory.anon))
        time.sleep(0.2)


def test_a_reused_trial_process_does_not_keep_each_trials_memory(ray_address, tiny, tmp_path):
    # Tune runs each trial on a new thread of the reused process, and glibc kept what each
    # thread freed in that thread's malloc arena: the process grew by a trial's working set
    # (≈ 0.2 GB here) with every trial while the memory in use stayed constant.
    lams = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]
    trials = len(lams)
    spec = probe_spec("probe_memory", {"lsd": {"strategy": "lsd"}}, {"lam": lams}, seeds=(0,))
    # The cpu-demo batch (16 exams of up to 16 frames, two views): the size that is retained.
    argv = [
        "--profile", "cpu-demo", "--data", str(tiny), "--no-report",
        "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path / "studies"),
        "--max-concurrent", "1", "--set", "epochs=1",
    ]  # fmt: skip
    samples: list[tuple[int, int, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(
        target=sample_trial_memory,
        args=(tmp_path / "studies" / "probe_memory", samples, stop),
        daemon=True,
    )
    sampler.start()
    try:
        assert main(spec, str(tmp_path / "probe_memory.py"), argv) == 0
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert len(results(tmp_path, "probe_memory")) == trials
    # All trials ran in one reused process, else the test would measure nothing.
    assert len({pid for _, pid, _ in samples}) == 1
    first = max(anon for started, _, anon in samples if started == 1)
    last = max(anon for started, _, anon in samples if started >= trials - 1)
    # Measured: +527 MiB after 5 more trials before the fix (1052 → 1579), +3 after (858 → 861).
    assert last - first < 250, f"trial process: {first} MiB in its first trial, {last} at the end"
