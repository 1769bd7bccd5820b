"""Byte-identical and near-duplicate images across splits (a leak public ultrasound sets have).

Identical: a 16-byte blake2b digest per stored image.

Near-duplicate: each image becomes a 32 x 32 thumbnail of block means, high-passed (minus its
3 x 3 local mean, so brightness and contrast changes do not matter); the dataset's mean and
its top principal components (up to 16, one per 100 images) are projected out, and the
residual is scaled to unit length. Two images are near-duplicates when the correlation of
their residuals reaches the threshold (0.9).

Why not a bit hash (dHash, pHash) or plain thumbnails: frames of one scanner share the black
frame around the sector, the burned-in text and the rulers, which dominate a small hash or
thumbnail, so different patients' frames collide (on the synthetic phantom plain 32 x 32
thumbnails of different patients reach r = 0.99). The principal components capture exactly
that shared layout; what is left is each frame's own content, which a re-exported, slightly
noisy or brightness-shifted copy keeps. Measured on the phantom (4 473 frames, 64 px): frames
of different patients reach at most r = 0.71 (99.99th percentile 0.35), copies with noise
(sigma 2) and a brightness shift at least 0.96; a copy rescaled by 1.37 and back (a blur) has a
median of 0.89, so heavier edits are found only in part.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy import ndimage

from uslearn.data.dataset import SPLITS

THUMB = 32
CHUNK = 512
QUERY = 2048
MAX_COMPONENTS = 16
PCA_ROWS = 20_000
POWER_ITERATIONS = 4


def digests_and_thumbnails(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (digest per image, (N, T*T) float16 high-passed thumbnails, constant mask).

    T = min(32, image side). Reads the store once, ``CHUNK`` images at a time (float16 keeps
    90 000 thumbnails in 184 MB).
    """
    n, h, w = images.shape
    side = min(THUMB, h, w)
    ys = np.linspace(0, h, side + 1).astype(int)[:-1]
    xs = np.linspace(0, w, side + 1).astype(int)[:-1]
    cell = np.outer(np.diff(np.append(ys, h)), np.diff(np.append(xs, w))).astype(np.float32)
    digests = np.empty(n, dtype="S16")
    thumbs = np.empty((n, side * side), np.float16)
    constant = np.empty(n, bool)
    for start in range(0, n, CHUNK):
        block = np.asarray(images[start : start + CHUNK])
        for i, image in enumerate(block):
            digests[start + i] = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        flat = block.reshape(len(block), -1)
        constant[start : start + len(block)] = flat.min(axis=1) == flat.max(axis=1)
        rows = np.add.reduceat(block, ys, axis=1, dtype=np.uint32)  # integer sums: no float copy
        sums = np.add.reduceat(rows, xs, axis=2).astype(np.float32)
        means = sums / cell
        high = means - ndimage.uniform_filter(means, size=(1, 3, 3), mode="nearest")
        thumbs[start : start + len(block)] = high.reshape(len(block), -1)
    return digests, thumbs, constant


def shared_layout(
    thumbs: np.ndarray, skip: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean thumbnail, (k, D) top principal directions) of the non-skipped thumbnails.

    k = min(16, n // 100): a small dataset keeps its components (a duplicated pair must not
    become a component of its own). Fitted on at most ``PCA_ROWS`` rows drawn with ``seed``.
    """
    rows = np.flatnonzero(~skip)
    if len(rows) == 0:
        return np.zeros(thumbs.shape[1], np.float32), np.zeros((0, thumbs.shape[1]), np.float32)
    if len(rows) > PCA_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, PCA_ROWS, replace=False))
    sample = thumbs[rows].astype(np.float32)
    mean = sample.mean(axis=0)
    k = min(MAX_COMPONENTS, len(np.flatnonzero(~skip)) // 100)
    if k == 0:
        return mean, np.zeros((0, thumbs.shape[1]), np.float32)
    centred = sample - mean
    # Randomised subspace iteration for the top-k directions: a few passes over the sample,
    # instead of an eigendecomposition of the D x D scatter matrix (seconds, and slow to
    # converge when the spectrum is flat).
    basis = (
        np.random.default_rng(seed).standard_normal((centred.shape[1], k + 8)).astype(np.float32)
    )
    for _ in range(POWER_ITERATIONS):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    projected = centred @ basis
    _, vectors = np.linalg.eigh(projected.T @ projected)  # ascending eigenvalues
    return mean, (basis @ vectors[:, ::-1][:, :k]).T.astype(np.float32)


def _residuals(thumbs: np.ndarray, rows: np.ndarray, layout: tuple) -> np.ndarray:
    mean, components = layout
    residual = thumbs[rows].astype(np.float32) - mean
    residual -= (residual @ components.T) @ components
    norms = np.linalg.norm(residual, axis=1, keepdims=True)
    return np.divide(residual, norms, out=np.zeros_like(residual), where=norms > 1e-3)


def identical_pairs(
    digests: np.ndarray, splits: np.ndarray, skip: np.ndarray
) -> list[tuple[int, int]]:
    """Return (first row, other row) pairs of identical images in different splits."""
    frame = pd.DataFrame({"digest": digests, "split": splits})[~skip]
    pairs = []
    for rows in frame.groupby("digest").indices.values():
        rows = frame.index.to_numpy()[rows]
        first = rows[0]
        pairs += [(int(first), int(r)) for r in rows[1:] if splits[r] != splits[first]]
    return pairs


def near_duplicate_pairs(
    digests: np.ndarray,
    thumbs: np.ndarray,
    splits: np.ndarray,
    skip: np.ndarray,
    threshold: float,
) -> list[tuple[int, int]]:
    """Return pairs of different-split rows whose residual correlation is >= ``threshold``.

    Identical pairs are left out (``identical_pairs`` reports them). Residuals are computed
    once (float16, like the thumbnails); for each pair of splits the smaller one is held as
    float32 and the larger one streams through in chunks of ``QUERY`` rows.
    """
    layout = shared_layout(thumbs, skip)
    residuals = np.zeros_like(thumbs)
    for start in range(0, len(thumbs), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(thumbs)))
        residuals[rows] = _residuals(thumbs, rows, layout)
    members = {s: np.flatnonzero((splits == s) & ~skip) for s in SPLITS}
    pairs = []
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            small, large = sorted((members[a], members[b]), key=len)
            if not len(small):
                continue
            held = residuals[small].astype(np.float32)
            for start in range(0, len(large), QUERY):
                chunk = large[start : start + QUERY]
                sims = residuals[chunk].astype(np.float32) @ held.T
                hit_chunk, hit_held = np.nonzero(sims >= threshold)
                for x, y in zip(chunk[hit_chunk].tolist(), small[hit_held].tolist()):
                    if digests[x] != digests[y]:
                        pairs.append((min(x, y), max(x, y)))
    return sorted(pairs)


def cross_split_duplicates(
    images: np.ndarray, splits: np.ndarray, threshold: float = 0.9
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """Return (identical pairs, near-duplicate pairs, number of constant images) across splits.

    Constant (blank) images are not compared: two black frames are not a patient leak.
    ``threshold`` > 1 skips the near-duplicate search.
    """
    digests, thumbs, constant = digests_and_thumbnails(images)
    identical = identical_pairs(digests, splits, constant)
    near = (
        near_duplicate_pairs(digests, thumbs, splits, constant, threshold) if threshold <= 1 else []
    )
    return identical, near, int(constant.sum())
