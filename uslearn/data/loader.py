"""Batch loading for training: rows of the uint8 memory map → one (B, H, W) uint8 tensor.

No per-image PIL work: one ``numpy.take`` gathers the rows straight into a (pinned) host buffer,
and one copy moves it to the device. Augmentation and the float conversion happen on the device
(docs/GPU.md: a per-image CPU pipeline cannot feed a GPU at > 10 000 img/s).
"""

from __future__ import annotations

import numpy as np
import torch

from uslearn.data.dataset import DatasetError, check_store


def load_batch(
    images: np.ndarray,
    rows: np.ndarray,
    device: torch.device | str | None = None,
    pin: bool | None = None,
) -> torch.Tensor:
    """Gather ``images[rows]`` into one uint8 tensor on ``device``, rows in the given order.

    Args:
        images: (N, H, W) uint8 array or memory map (``Dataset.images``).
        rows: 1-D integer row indices (an ``ExamBatchSampler`` batch); repeats are allowed.
        device: target device; None keeps the batch on the CPU.
        pin: gather into page-locked memory so the host→device copy is asynchronous; None
            pins exactly when ``device`` is a CUDA device.

    Returns:
        A (B, H, W) uint8 tensor on ``device`` (B = len(rows)). When the copy to a CUDA
        device is asynchronous, later work on the current stream is ordered after it.

    Raises:
        DatasetError: if ``images`` is not (N, H, W) uint8 or a row is out of range.
        EnvError: the store changed on disk since it was mapped (``check_store``).
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(
            f"load_batch: images are {images.shape} {images.dtype}; expected (N, H, W) uint8"
        )
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
        raise DatasetError(
            f"load_batch: row indices span {rows.min()}..{rows.max()}, store has {len(images)} rows"
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    if pin is None:
        pin = device.type == "cuda"
    host = torch.empty((len(rows), *images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    check_store(images)  # a truncated store would kill the process with SIGBUS in the take
    # Gathering into the destination avoids an extra full-batch copy; ascending rows within an
    # exam (the sampler's order) make the memory-map reads mostly sequential.
    np.take(images, rows, axis=0, out=host.numpy())
    if device.type == "cpu":
        return host
    return host.to(device, non_blocking=pin)
