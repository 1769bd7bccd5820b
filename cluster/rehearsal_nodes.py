"""The rehearsal's node provider: Ray's fake multi-node provider with one log monitor.

Every fake node is a raylet on this machine, and all of them write into the one session log
folder. Ray's fake provider starts a log monitor with each node, and each log monitor sends
every worker's lines to the driver: with N nodes, each line reached the console N + 1 times,
and each extra monitor held ≈ 45 MB. Here the fake worker nodes start without one, so the
head's monitor sends each line once, as on a real cluster (one machine, one log folder, one
monitor).

Loaded by the head's autoscaler (`cluster/rehearsal.sh` puts this folder on its PYTHONPATH):
`provider: {type: external, module: rehearsal_nodes.RehearsalNodeProvider}` in
`cluster/rehearsal.yaml`. Everything else is Ray's `FakeMultiNodeProvider`.
"""

from __future__ import annotations

import threading

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

_RayParams = ray._private.parameter.RayParams
_swap = threading.Lock()


class _WorkerNodeParams(_RayParams):
    """Ray's node parameters, with the log monitor off unless asked for."""

    def __init__(self, **kwargs):
        kwargs.setdefault("include_log_monitor", False)
        super().__init__(**kwargs)


class RehearsalNodeProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider whose worker nodes start without a log monitor."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # Ray's method builds the node's RayParams inline; it is lent the subclass above for
        # the call (this autoscaler process starts fake nodes and nothing else).
        with _swap:
            ray._private.parameter.RayParams = _WorkerNodeParams
            try:
                super()._create_node_with_resources_and_labels(
                    node_config, tags, count, resources, labels
                )
            finally:
                ray._private.parameter.RayParams = _RayParams
