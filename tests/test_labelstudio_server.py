"""The labelling round trip against a real Label Studio server (``make test-labelstudio``).

``uslearn curate`` writes tasks and a labelling config for an LSD model of the tiny phantom;
Label Studio 1.23 (its own virtual environment, ``make labelstudio-env``: its Django stack
clashes with the project's dependencies) runs on 127.0.0.1 with its data in tmp_path and
serves curate's images as local files. Through its HTTP API the test creates the project,
imports the tasks, checks that every task image is served, annotates (a proposal accepted,
one corrected, a task without proposal labelled, one skipped, one image annotated twice
with different labels), exports JSON, and runs ``uslearn data import-labelstudio`` on the
export; the new dataset must hold those labels and sources, leave the source untouched,
pass ``uslearn data check`` and train.

Without the environment the test skips and says why; CI sets USLEARN_REQUIRE_LABELSTUDIO=1,
which turns the skip into a failure. The server is stopped at the end, failed or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from uslearn.data.dataset import CLASSES, Dataset

pytestmark = [pytest.mark.labelstudio, pytest.mark.timeout(1500)]

ROOT = Path(__file__).parents[1]
TOKEN = "uslearn-test-token-0123456789"  # the API token the server is started with
START_DEADLINE = 600  # seconds: the first start migrates a new database (85 s at load 5)
TRAIN = ["--size", "32", "--batch-exams", "4", "--max-images-per-exam", "4", "--device", "cpu"]


def label_studio() -> Path:
    found = Path(os.environ.get("USLEARN_LABELSTUDIO", ROOT / ".venv-labelstudio/bin/label-studio"))
    if found.is_file():
        return found
    reason = f"{found}: Label Studio is not installed (make labelstudio-env); .ci/run installs it"
    if os.environ.get("USLEARN_REQUIRE_LABELSTUDIO") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A started ``label-studio start`` and its HTTP API."""

    def __init__(self, binary: Path, data_dir: Path, document_root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "label-studio.log"
        env = {
            **os.environ,
            # The first user, made at start; the token needs the legacy-token flag below.
            "LABEL_STUDIO_USERNAME": "annotator@example.org",
            "LABEL_STUDIO_PASSWORD": "uslearn-test-password",
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            # curate's task URLs are /data/local-files/?d=images/<name>.png under this root.
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            # Nothing leaves the machine: no error reports, version checks or analytics.
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_HOST": "",  # Label Studio also reads a bare HOST: task URLs stay relative
        }
        command = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(data_dir)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "--enable-legacy-api-token"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped whole
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait(self) -> float:
        """Poll /health until it answers; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < START_DEADLINE:
            if self.process.poll() is not None:
                pytest.fail(f"label-studio exited with {self.process.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer,
            ):
                if answer.status == 200:
                    return time.monotonic() - started
            time.sleep(1)
        pytest.fail(f"label-studio did not answer in {START_DEADLINE} s:\n{self.tail()}")

    def call(self, method: str, path: str, body=None, expect: int = 200) -> bytes:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        assert status == expect, f"{method} {path}: {status} {payload[:500]!r}"
        return payload

    def json(self, method: str, path: str, body=None, expect: int = 200):
        return json.loads(self.call(method, path, body, expect))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def uslearn(*args: str) -> subprocess.CompletedProcess:
    """Run the ``uslearn`` command line as a user would."""
    env = {**os.environ, "USLEARN_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "uslearn", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def choices(organs: list[str]) -> list[dict]:
    return [
        {"from_name": "organs", "to_name": "image", "type": "choices", "value": {"choices": organs}}
    ]


def test_curate_label_studio_import_round_trip(tiny_phantom, tmp_path):
    binary = label_studio()
    curated = tmp_path / "curate"
    # Started first: its database migrations run while the model trains.
    server = Server(binary, tmp_path / "label-studio", curated)
    try:
        _round_trip(server, tiny_phantom, tmp_path, curated)
    finally:
        server.stop()
    assert server.process.poll() is not None


def _round_trip(server: Server, tiny: Path, tmp_path: Path, curated: Path) -> None:
    before = hashes(tiny)
    run = tmp_path / "lsd"
    done = uslearn(
        "train",
        "--data",
        str(tiny),
        "--strategy",
        "lsd",
        "--epochs",
        "1",
        *TRAIN,
        "--out",
        str(run),
    )
    assert done.returncode == 0, done.stderr
    done = uslearn(
        "curate",
        "--model",
        str(run),
        "--data",
        str(tiny),
        "--out",
        str(curated),
        "--rank",
        "12",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    tasks = json.loads((curated / "label_studio_tasks.json").read_text())
    # A labelled image moves its patient out of the unlabelled pool: one patient of the pool
    # (the tiny phantom's has 4) gets no label, so that the split stays non-empty.
    patient = Dataset.open(tiny).manifest.set_index("image_id")["patient_id"]
    kept = patient[tasks[-1]["data"]["image_id"]]
    skipped = tasks[-1]["data"]["image_id"]
    others = [t for t in tasks if patient[t["data"]["image_id"]] != kept]
    proposed = [t for t in others if t["data"]["proposed"]]
    assert len(proposed) >= 3 and len(others) >= 4, [t["data"] for t in tasks]
    proposal = {t["data"]["image_id"]: t["data"]["proposed"].split(";") for t in proposed}
    # One task as a user might add it by hand: the image, without a proposal.
    hand = next(t for t in others if t not in proposed[:3])
    hand["data"].pop("proposed")
    hand.pop("predictions")
    print(f"label-studio answered after {server.wait():.0f} s")

    project = server.json(
        "POST",
        "/api/projects",
        {
            "title": "uslearn curate",
            "label_config": (curated / "label_studio_config.xml").read_text(),
        },
        expect=201,
    )["id"]
    storage = {"project": project, "path": str(curated / "images"), "title": "curate images"}
    server.json("POST", "/api/storages/localfiles", {**storage, "use_blob_urls": False}, expect=201)
    imported = server.json("POST", f"/api/projects/{project}/import", tasks, expect=201)
    assert imported["task_count"] == len(tasks) and imported["prediction_count"] == len(tasks) - 1
    listed = server.json("GET", f"/api/tasks?project={project}&page_size=1000")["tasks"]
    task_of = {t["data"]["image_id"]: t for t in listed}
    assert set(task_of) == {t["data"]["image_id"] for t in tasks}
    for t in listed:  # the annotator sees every image: Label Studio serves curate's PNG files
        name = t["data"]["image"].split("d=images/")[1]
        assert server.call("GET", t["data"]["image"]) == (curated / "images" / name).read_bytes()

    def annotate(image_id: str, organs: list[str], cancelled: bool = False) -> dict:
        body = {"result": [] if cancelled else choices(organs), "was_cancelled": cancelled}
        return server.json(
            "POST", f"/api/tasks/{task_of[image_id]['id']}/annotations", body, expect=201
        )

    accept, correct, twice = (t["data"]["image_id"] for t in proposed[:3])
    fix = ["liver"] if proposal[correct] == ["other"] else ["other"]
    new_id = hand["data"]["image_id"]
    ids = {
        accept: annotate(accept, proposal[accept])["id"],
        correct: annotate(correct, fix)["id"],
        new_id: annotate(new_id, ["liver", "kidney"])["id"],
    }
    user = annotate(skipped, [], cancelled=True)["completed_by"]
    annotate(twice, ["spleen"])
    time.sleep(0.01)  # the second one is updated later
    ids[twice] = annotate(twice, ["bladder"])["id"]
    export = tmp_path / "export.json"
    export.write_bytes(
        server.call(
            "GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true"
        )
    )

    new = tmp_path / "v2"
    args = [
        "data",
        "import-labelstudio",
        "--export",
        str(export),
        "--data",
        str(tiny),
        "--out",
        str(new),
    ]
    refused = uslearn(*args)
    assert refused.returncode == 2 and f"image {twice}: its annotations disagree" in refused.stderr
    assert "Traceback" not in refused.stderr and not new.exists()
    done = uslearn(*args, "--on-conflict", "latest")
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert f"4 images labelled from {len(tasks)} tasks" in done.stdout
    assert "1 task(s) skipped" in done.stdout
    assert hashes(tiny) == before  # the source dataset is untouched

    m = Dataset.open(new).manifest.set_index("image_id")
    expected = {
        accept: (proposal[accept], "proposal_accepted"),
        correct: (fix, "corrected"),
        new_id: (["liver", "kidney"], "new"),
        twice: (["bladder"], "corrected"),
    }
    for image_id, (organs, source) in expected.items():
        assert m.loc[image_id, list(CLASSES)].tolist() == [int(c in organs) for c in CLASSES]
        assert m.loc[image_id, "label_source"] == source
        assert m.loc[image_id, "annotation_id"] == ids[image_id]
        assert m.loc[image_id, "annotator"] == f"ls-user-{user}"
        assert m.loc[image_id, "split"] == "labelled"
    assert (
        m.loc[skipped, "label_source"] == "source" and (m.loc[skipped, list(CLASSES)] == -1).all()
    )
    assert not (m["annotator"].str.contains("@")).any()  # no e-mail reaches the manifest
    checked = uslearn("data", "check", str(new))
    assert checked.returncode == 0, checked.stdout
    trained = uslearn(
        "train",
        "--data",
        str(new),
        "--strategy",
        "supervised",
        "--early-stopping",
        "epochs",  # one epoch: the step rule would run at least 300 steps
        "--epochs",
        "1",
        *TRAIN,
        "--out",
        str(tmp_path / "ft"),
    )
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (
        config["dataset_fingerprint"]
        == Dataset.open(new).fingerprint
        != Dataset.open(tiny).fingerprint
    )
