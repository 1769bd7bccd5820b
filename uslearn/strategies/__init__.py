"""Strategies of the paper: PICA / LSD (clustering.py), fine-tuning (supervised.py), FixMatch
One-Head / Two-Head (fixmatch.py), over one shared loop (loop.py).

``run`` and ``STRATEGIES`` (registry.py) import torch, so they load on first use; the configs
(config.py) do not, so validating a config stays cheap.
"""

from uslearn.strategies.config import STRATEGY_NAMES, config_classes, parse_config, resolved_config


def __getattr__(name: str):
    if name in ("run", "STRATEGIES"):
        from uslearn.strategies import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'uslearn.strategies' has no attribute {name!r}")


__all__ = [
    "STRATEGIES",
    "STRATEGY_NAMES",
    "config_classes",
    "parse_config",
    "resolved_config",
    "run",
]
