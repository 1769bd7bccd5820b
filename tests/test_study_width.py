"""A grid study grows with its cluster: nodes that join after the study started run trials too.

Real Ray with two nodes of one CPU each (``ray.cluster_utils.Cluster``: a head and a worker
raylet on this machine): the study starts while only the head is up, the worker joins a second
later, and the two trials of the grid must overlap in time. Before, a grid was capped at what
fitted when it started (here one trial), so an autoscaling cluster ran at its starting width.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_study_ray import probe_spec, runs_of, study_argv

from uslearn.study_cli import main

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]


def test_a_grid_runs_trials_on_nodes_that_joined_after_it_started(tiny_phantom, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"TRAIN_DRIVER": 1},
            "include_dashboard": False,
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        spec = probe_spec(
            "width_probe", {"lsd": {"strategy": "lsd"}}, {"lam": [1.0, 2.0]}, seeds=(0,)
        )
        # Long enough trials (a few seconds each on 2 cores) that the second must start while the
        # first runs if, and only if, it may use the node that joins.
        argv = study_argv(tmp_path, tiny_phantom, "--no-report", "--set", "epochs=4")
        codes: list[int] = []
        study = threading.Thread(
            target=lambda: codes.append(main(spec, str(tmp_path / "width_probe.py"), argv))
        )
        study.start()
        deadline = time.monotonic() + 120
        while not (tmp_path / "mlflow.db").is_file():  # the study has started: its store exists
            assert study.is_alive() and time.monotonic() < deadline
            time.sleep(0.2)
        cluster.add_node(num_cpus=1)
        study.join(timeout=600)
        assert codes == [0]
    finally:
        ray.shutdown()
        cluster.shutdown()
    _, _, children = runs_of(tmp_path, "width_probe")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    first, second = sorted(children, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the trials ran one after the other"
