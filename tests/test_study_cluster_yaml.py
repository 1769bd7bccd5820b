"""cluster.yaml passes the checks ``ray up`` runs before it contacts a cloud provider."""

from __future__ import annotations

import copy
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


def test_mlflow_listens_on_the_private_address_and_every_node_knows_it():
    config = load()
    server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    assert "0.0.0.0" not in server and "--host $(hostname -I" in server
    assert "--backend-store-uri sqlite:///" in server
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("MLFLOW_TRACKING_URI" in c for c in config[key])
    assert any(
        "pip install" in c and "ray[default,train,tune]==" in c for c in config["setup_commands"]
    )


def test_a_fractional_node_resource_is_rejected_by_the_same_validation():
    config = load()
    config["available_node_types"][config["head_node_type"]]["resources"]["TRAIN_DRIVER"] = 0.5
    with pytest.raises(Exception, match="integer"):
        ray_validate(config)
