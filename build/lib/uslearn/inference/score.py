"""Batched scoring of a source in one process: decode (in worker processes) → batch → model.

Dataset rows are gathered straight from the memory map into (pinned) batches, as in training;
files are decoded by ``sources.Decoder`` in parallel processes, in order, and batched. The
model runs on the GPU when there is one (bf16 autocast, channels_last: the same rules as
training's evaluation), else on the CPU in fp32.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from uslearn.data.ingest import Workers
from uslearn.data.loader import load_batch
from uslearn.data.rejected import Rejection
from uslearn.inference.package import BatchScores, ModelPackage
from uslearn.inference.sources import Decoder, Source
from uslearn.log import progress
from uslearn.strategies.evaluation import EVAL_BATCH


@dataclass
class Scored:
    """The scores of every accepted image of a source, in source order.

    Attributes:
        image: image ids (dataset ``image_id``, relative path, or DICOM pseudonym).
        scores: (N, C) per-class scores.
        cluster, cluster_probs: a clustering model's argmax cluster (N,) and probabilities (N, K).
        features: (N, 512) backbone features when asked for.
        rows: dataset rows of the images (``data`` sources), else None.
        rejections: images not scored, with the reason (unreadable, doppler, ...).
        seconds: wall time of decoding and scoring.
    """

    image: list[str]
    scores: np.ndarray
    cluster: np.ndarray | None = None
    cluster_probs: np.ndarray | None = None
    features: np.ndarray | None = None
    rows: np.ndarray | None = None
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Return scored images per second of wall time."""
        return len(self.image) / max(self.seconds, 1e-9)

    @classmethod
    def join(
        cls, image: list[str], parts: list[BatchScores], rows=None, rejections=(), seconds=0.0
    ) -> Scored:
        """Return one ``Scored`` from per-batch scores, in order."""

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if not values or values[0] is None else np.concatenate(values)

        return cls(
            image=list(image),
            scores=cat("scores") if parts else np.zeros((0, 0)),
            cluster=cat("cluster"),
            cluster_probs=cat("cluster_probs"),
            features=cat("features"),
            rows=None if rows is None else np.asarray(rows, dtype=np.int64),
            rejections=list(rejections),
            seconds=seconds,
        )


def _decode_one(decoder: Decoder, task) -> list:
    return decoder([task])[0]


def score_source(
    package: ModelPackage,
    source: Source,
    batch_size: int = EVAL_BATCH,
    workers: int = 1,
    features: bool = False,
) -> Scored:
    """Score every image of ``source`` with ``package`` in this process.

    Args:
        package: the model, already moved to its device (``ModelPackage.to``).
        source: what to score (``uslearn.inference.sources``).
        batch_size: images per forward pass.
        workers: decoding processes for files (1: decode in this process).
        features: also keep the (N, 512) backbone features (``curate``).

    Returns:
        The scores of the accepted images, in source order, and the rejected ones.
    """
    started = time.perf_counter()
    if source.kind == "data":
        rows = source.rows()
        parts = []
        for start in progress(range(0, len(rows), batch_size), desc="predict", unit="batch"):
            block = load_batch(source.data.images, rows[start : start + batch_size], package.device)
            parts.append(package.score(block, features=features))
        ids = [item.records[0]["image_id"] for item in source.items]
        return Scored.join(ids, parts, rows=rows, seconds=time.perf_counter() - started)
    decoder = Decoder(source.kind, source.root, source.preprocess)
    rejections = list(source.rejections)
    ids, pending, parts = [], [], []
    with Workers(workers) as pool:
        outcomes = pool.map(functools.partial(_decode_one, decoder), [i.task for i in source.items])
        for item, results in progress(
            zip(source.items, outcomes), total=len(source.items), desc="predict", unit="file"
        ):
            frames = item.frames or [None] * len(item.records)
            for record, frame, (image, reason, detail) in zip(item.records, frames, results):
                if image is None:
                    rejections.append(
                        Rejection(item.source, frame, reason, detail, record["image_id"])
                    )
                    continue
                ids.append(record["image_id"])
                pending.append(image)
                if len(pending) == batch_size:
                    parts.append(package.score(np.stack(pending), features=features))
                    pending = []
    if pending:
        parts.append(package.score(np.stack(pending), features=features))
    return Scored.join(ids, parts, rejections=rejections, seconds=time.perf_counter() - started)


def rejection_summary(rejections: list[Rejection]) -> str:
    """Return ``"3 skipped (doppler 2, unreadable 1)"`` or an empty string."""
    if not rejections:
        return ""
    counts: dict[str, int] = {}
    for r in rejections:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{len(rejections)} skipped ({parts})"
