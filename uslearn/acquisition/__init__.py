"""Acquisition functions: which unlabelled images to label next (a building block, numpy only).

``select(name, pool, budget, seed)`` returns one round's picks; ``ENTRIES`` lists the
functions (``random``, ``entropy``, ``uncertainty``, ``cluster``, ``coreset``).
"""

from uslearn.acquisition.pool import UNITS, Pool, groups_of, take
from uslearn.acquisition.registry import ENTRIES, entry, select

__all__ = ["ENTRIES", "UNITS", "Pool", "entry", "groups_of", "select", "take"]
