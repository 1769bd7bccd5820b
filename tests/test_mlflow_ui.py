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
        url = runs_table_url(f"http://127.0.0.1:{port}", experiment_id)
        dom = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
    finally:
        subprocess.run([services, "mlflow-stop", "--state", str(state)], env=env, timeout=60)
    # The runs table, not the GenAI overview (which has no "matching runs" footer): the
    # study's parent run and its trial nested under it (collapsed): two runs in all.
    matching = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert matching, dom[-2000:]
    assert int(matching.group(1)) == 2
    assert ">probe_ui<" in dom
