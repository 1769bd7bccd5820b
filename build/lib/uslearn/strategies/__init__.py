"""Strategies of the paper, one file each over one shared loop (loop.py), named by the registry.

The registry (registry.py) and the configs (config.py) do not import torch, so naming,
validating and grouping strategies stays cheap; ``run`` (runner.py) imports torch, so it loads
on first use.
"""

from uslearn.strategies.registry import (
    STRATEGY_NAMES,
    config_classes,
    entry,
    names,
    parse_config,
    resolved_config,
)


def __getattr__(name: str):
    if name == "run":
        from uslearn.strategies.runner import run

        return run
    raise AttributeError(f"module 'uslearn.strategies' has no attribute {name!r}")


__all__ = [
    "STRATEGY_NAMES",
    "config_classes",
    "entry",
    "names",
    "parse_config",
    "resolved_config",
    "run",
]
