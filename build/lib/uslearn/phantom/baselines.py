"""Fixed, untrained feature extractors for the phantom's learnability baselines.

A task that an 8 × 8 thumbnail solves is about layout, not anatomy; texture features (fixed
random filters) show how far speckle and walls alone go. Used by
``benchmarks/phantom_learnability.py`` and ``tests/test_phantom_learnability.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def thumbnail_features(images: torch.Tensor) -> np.ndarray:
    """Return (N, 64) 8x8 average-pooled thumbnails of (N, 1, H, W) images in [0, 1]."""
    return F.adaptive_avg_pool2d(images, 8).flatten(1).numpy()


def texture_features(images: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Return texture features of (N, 1, H, W) images: 32 fixed random 5x5 zero-mean filters,
    rectified and pooled, plus local contrast and 8x8 thumbnails."""
    kernels = torch.randn(32, 1, 5, 5, generator=torch.Generator().manual_seed(seed))
    kernels -= kernels.mean((2, 3), keepdim=True)
    responses = F.relu(F.conv2d(images, kernels, padding=2))
    mean = F.avg_pool2d(images, 4)
    local_std = (F.avg_pool2d(images * images, 4) - mean * mean).clamp(min=0).sqrt()
    parts = [
        F.adaptive_avg_pool2d(responses, 4).flatten(1),
        F.adaptive_max_pool2d(responses, 2).flatten(1),
        F.adaptive_avg_pool2d(local_std, 6).flatten(1),
        F.adaptive_avg_pool2d(images, 8).flatten(1),
    ]
    return torch.cat(parts, 1).numpy()
