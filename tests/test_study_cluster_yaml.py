"""cluster.yaml passes the checks ``ray up`` runs before it contacts a cloud provider."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def ray_validate(config: dict) -> dict:
    """Return ``config`` filled with Ray's provider defaults after Ray's own validation.

    ``prepare_config`` / ``validate_config`` are private Ray API (what ``ray up`` calls): a Ray
    upgrade that moves them fails this test, not the package.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation():
    prepared = ray_validate(load())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_head_offers_the_train_driver_resource_and_workers_offer_gpus():
    config = load()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["TRAIN_DRIVER"] >= 1
    assert '"TRAIN_DRIVER": 1' in " ".join(config["head_start_ray_commands"])
    workers = [
        t for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    ]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)


HEAD_SERVICES = CLUSTER_YAML.parent / "cluster" / "head_services.sh"


def test_mlflow_listens_on_the_private_address_and_every_node_knows_it():
    config = load()
    server = next(c for c in config["head_start_ray_commands"] if "mlflow-start" in c)
    # The head starts the server with the script the local rehearsal uses, so they cannot drift.
    assert "cluster/head_services.sh mlflow-start" in server
    assert "0.0.0.0" not in server and "--host $(hostname -I" in server
    assert "--artifacts /mnt/uslearn/mlartifacts" in server
    script = HEAD_SERVICES.read_text()
    assert "MLFLOW_BACKEND_STORE_URI=$backend_uri" in script
    assert '--artifacts-destination "$artifacts"' in script
    rehearsal = (CLUSTER_YAML.parent / "cluster" / "rehearsal.sh").read_text()
    assert '"$here/head_services.sh" mlflow-start' in rehearsal
    for key, host in (
        ("head_setup_commands", "--host $(hostname -I"),
        ("worker_setup_commands", "--host $RAY_HEAD_IP"),
    ):
        env = next(c for c in config[key] if "head_services.sh env" in c)
        assert host in env and "--stage " in env
    assert any(
        "pip install" in c and "ray[default,train,tune]==" in c for c in config["setup_commands"]
    )


def test_the_head_tracks_in_postgresql_sized_for_the_cluster():
    config = load()
    starts = config["head_start_ray_commands"]
    pg = next(i for i, c in enumerate(starts) if "head_services.sh pg-start" in c)
    server = next(i for i, c in enumerate(starts) if "head_services.sh mlflow-start" in c)
    assert pg < server and "--backend postgresql" in starts[server]
    # Both sized for the same number of concurrent trials: GPU workers x trials per GPU.
    from uslearn.study.profiles import PROFILES

    gpus = config["available_node_types"]["gpu_worker"]["max_workers"]
    per_gpu = round(1 / PROFILES["gpu"].resources.gpus_per_worker)
    trials = f"--max-trials {gpus * per_gpu}"
    assert trials in starts[pg] and trials in starts[server]
    assert any("apt-get install -y -q postgresql" in c for c in config["head_setup_commands"])
    rehearsal = (CLUSTER_YAML.parent / "cluster" / "rehearsal.sh").read_text()
    assert '"$here/head_services.sh" pg-start' in rehearsal
    assert "--backend postgresql" in rehearsal


def test_every_node_gets_the_exports_of_the_shared_script():
    env = subprocess.run(
        [str(HEAD_SERVICES), "env", "--host", "10.0.0.5", "--storage", "/mnt/uslearn"]
        + ["--stage", "/tmp/uslearn-stage", "--venv", "/home/ubuntu/venv", "--ray-address", "auto"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert env == [
        "export PATH=/home/ubuntu/venv/bin:$PATH",
        "export MLFLOW_TRACKING_URI=http://10.0.0.5:5000",
        "export USLEARN_RUNS=/mnt/uslearn/runs",
        "export USLEARN_DATA=/mnt/uslearn/data",
        "export USLEARN_STAGE_DIR=/tmp/uslearn-stage",
        "export RAY_ADDRESS=auto",
    ]


def test_the_rehearsal_config_mirrors_cluster_yaml():
    import ray.autoscaler

    rehearsal = yaml.safe_load((CLUSTER_YAML.parent / "cluster" / "rehearsal.yaml").read_text())
    # An external provider gets no defaults filled in: every launcher key is written out.
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    assert set(schema["properties"]) <= set(rehearsal)
    provider = rehearsal["provider"]
    assert (provider["type"], provider["module"]) == (
        "external",
        "rehearsal_nodes.RehearsalNodeProvider",
    )
    head = rehearsal["available_node_types"][rehearsal["head_node_type"]]["resources"]
    assert head["TRAIN_DRIVER"] >= 1 and "GPU" not in head
    workers = [
        t for n, t in rehearsal["available_node_types"].items() if n != rehearsal["head_node_type"]
    ]
    assert all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in workers)


def test_a_fractional_node_resource_is_rejected_by_the_same_validation():
    config = load()
    config["available_node_types"][config["head_node_type"]]["resources"]["TRAIN_DRIVER"] = 0.5
    with pytest.raises(Exception, match="integer"):
        ray_validate(config)
