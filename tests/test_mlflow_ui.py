"""The MLflow UI as a user sees it: the link the study prints opens its runs table.

A tiny study runs through real Ray and MLflow (sqlite); the MLflow server of
cluster/head_services.sh serves that store on 127.0.0.1, and headless Chromium (Debian's
``chromium`` package) renders the runs page. Without Chromium the test skips and says why;
CI installs it and sets USLEARN_REQUIRE_CHROMIUM=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from uslearn.study import StudySpec
from uslearn.study.tracking_uri import runs_table_url
from uslearn.study_cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,1000",
    # The UI is a single-page app: let its scripts fetch and render before the DOM is taken.
    "--virtual-time-budget=15000",
]


def chromium() -> str:
    """Return the Chromium executable, or skip (fail under CI) when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (apt-get install -y chromium); .ci/run installs it"
    if os.environ.get("USLEARN_REQUIRE_CHROMIUM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dump_dom(browser: str, url: str, tmp_path: Path) -> str:
    """Return the DOM headless Chromium renders for ``url``."""
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout


def trial_run(state: Path, experiment_id: str):
    """Return the study's one trial run (the child of its parent run)."""
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(f"sqlite:///{state / 'mlflow.db'}").search_runs(
        [experiment_id], filter_string="tags.trial_id != ''"
    )
    return run


@pytest.fixture
def finished_study(tmp_path, tiny_phantom):
    """Run a 1-trial study into ``<tmp>/mlflow/mlflow.db``; return (state dir, experiment id)."""
    import ray

    state = tmp_path / "mlflow"
    spec = StudySpec(
        name="probe_ui",
        title="UI test",
        fixed={"strategy": "lsd", "k": 0},
        grid={"lam": [2.0]},
        seeds=(0,),
    )
    argv = [
        "--profile", "cpu-demo", "--data", str(tiny_phantom),
        "--mlflow", f"sqlite:///{state / 'mlflow.db'}", "--storage", str(tmp_path / "studies"),
        "--no-report", "--set", "epochs=1", "--set", "batch_exams=4",
        "--set", "max_images_per_exam=4",
    ]  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(spec, str(tmp_path / "probe_ui.py"), argv) == 0
    finally:
        ray.shutdown()
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(f"sqlite:///{state / 'mlflow.db'}").get_experiment_by_name("probe_ui")
    return state, experiment.experiment_id


def test_the_printed_link_opens_the_runs_table_listing_the_study(finished_study, tmp_path):
    browser = chromium()
    state, experiment_id = finished_study
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    services = str(ROOT / "cluster" / "head_services.sh")
    start = [services, "mlflow-start", "--host", "127.0.0.1", "--port", str(port)]
    start += ["--state", str(state), "--artifacts", str(state / "mlartifacts")]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=240)
    try:
        base = f"http://127.0.0.1:{port}"
        dom = dump_dom(browser, runs_table_url(base, experiment_id), tmp_path)
        trial = trial_run(state, experiment_id)
        run_url = f"{base}/#/experiments/{experiment_id}/runs/{trial.info.run_id}"
        run_dom = dump_dom(browser, run_url, tmp_path)
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
             f"--screenshot={tmp_path / 'run_page.png'}", run_url],
            capture_output=True, timeout=180,
        )  # fmt: skip
    finally:
        subprocess.run([services, "mlflow-stop", "--state", str(state)], env=env, timeout=60)
    # The trial's own page opens on its description: the test F1 first, then where the
    # learning curves are, and the curves figure is among its artifacts.
    f1 = trial.data.metrics["test/f1_weighted"]
    assert f"test F1 (weighted): {f1:.4f}" in run_dom, run_dom[-2000:]
    assert "learning_curves.png" in run_dom, run_dom[-2000:]
    assert (tmp_path / "run_page.png").stat().st_size > 20_000  # a rendered page, not a blank one
    # The runs table, not the GenAI overview (which has no "matching runs" footer): the
    # study's parent run and its trial nested under it (collapsed): two runs in all.
    matching = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert matching, dom[-2000:]
    assert int(matching.group(1)) == 2
    assert ">probe_ui<" in dom
