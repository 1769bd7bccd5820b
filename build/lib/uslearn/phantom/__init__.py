"""Synthetic abdominal ultrasound phantom: B-mode exams with known multi-labels (docs/PHANTOM.md).

A leaf over the dataset contract: it writes dataset directories through
``uslearn.data.DatasetWriter``, like the importers, and nothing in ``uslearn.data`` imports it.
"""

from uslearn.phantom.generate import (
    PHANTOM_VERSION,
    PRESETS,
    TRUTH,
    Preset,
    ensure_phantom,
    generate_phantom,
)

__all__ = ["PHANTOM_VERSION", "PRESETS", "TRUTH", "Preset", "ensure_phantom", "generate_phantom"]
