"""Exam-based batch sampling (paper Sec. 3.2): a batch is t exams with all (or a capped number of)
their images, so that most organs appear in every batch.

The sampler yields arrays of dataset row indices; ``uslearn.data.loader.load_batch`` turns them
into a tensor. It is rank-aware for DDP: every rank gets disjoint exams and the same number of
batches, and the order is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from uslearn.data.dataset import DatasetError


class ExamBatchSampler:
    """Yields batches of dataset rows, each made of ``exams_per_batch`` whole exams.

    Every epoch the exams are shuffled with ``numpy.random.default_rng((seed, epoch))``; the
    same seed and epoch give the same batches on every machine. Under DDP (``world_size`` > 1)
    the shuffled exam list is padded by wrapping around to a multiple of ``world_size`` (as
    ``torch.utils.data.DistributedSampler`` does) and rank r takes exams r, r + W, r + 2W, ...:
    ranks see disjoint exams except for at most ``world_size - 1`` padding exams, and all ranks
    have the same number of batches (DDP needs that to keep its collectives in step).

    The last batch of an epoch may hold fewer than ``exams_per_batch`` exams; it is kept, so one
    epoch visits every exam exactly once on a single rank. Rows within an exam keep ascending
    row order (contiguous reads from the memory map); with ``max_images_per_exam`` > 0 an exam
    with more images contributes a fresh random subset of that many each epoch.

    Args:
        exam_ids: exam of each entry of ``rows`` (``exam_ids[i]`` is the exam of row ``rows[i]``).
        rows: dataset row indices to sample from (e.g. ``dataset.indices("unlabelled")``).
        exams_per_batch: t, the number of exams per batch (the paper uses 16).
        max_images_per_exam: cap on images taken from one exam per batch; 0 takes all.
        seed: base seed; the shuffle of an epoch depends only on (seed, epoch).
        rank: this process's rank in [0, world_size).
        world_size: number of DDP processes.

    Raises:
        DatasetError: on empty input, mismatched lengths or out-of-range arguments.
    """

    def __init__(
        self,
        exam_ids: Sequence[str] | np.ndarray,
        rows: np.ndarray,
        exams_per_batch: int,
        max_images_per_exam: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        exam_ids = np.asarray(exam_ids).reshape(-1)
        if len(rows) != len(exam_ids):
            raise DatasetError(
                f"ExamBatchSampler: {len(exam_ids)} exam ids for {len(rows)} rows; one per row expected"
            )
        if len(rows) == 0:
            raise DatasetError("ExamBatchSampler: no rows to sample from (is the split empty?)")
        if exams_per_batch < 1:
            raise DatasetError(f"exams_per_batch must be >= 1, got {exams_per_batch}")
        if max_images_per_exam < 0:
            raise DatasetError(
                f"max_images_per_exam must be >= 0 (0 = all), got {max_images_per_exam}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is not in [0, world_size={world_size})")
        # Exams in order of first appearance; rows of each exam sorted ascending.
        codes, _ = pd.factorize(pd.Series(exam_ids), sort=False)
        order = np.lexsort((rows, codes))
        self._rows = rows[order]
        counts = np.bincount(codes)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        self.n_exams = len(counts)
        self.exams_per_batch = int(exams_per_batch)
        self.max_images_per_exam = int(max_images_per_exam)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.exams_per_rank = -(-self.n_exams // self.world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next ``__iter__`` uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Return the number of batches per epoch (the same on every rank)."""
        return -(-self.exams_per_rank // self.exams_per_batch)

    def exams_of_rank(self) -> np.ndarray:
        """Return this rank's exam numbers for the current epoch, in batch order."""
        perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_exams)
        # Wrap-around padding: np.resize repeats the permutation up to the requested length.
        padded = np.resize(perm, self.exams_per_rank * self.world_size)
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield one int64 array of dataset row indices per batch, exams in shuffled order."""
        exams = self.exams_of_rank()
        # A separate stream per rank for the capped subsets, so it does not depend on how many
        # exams other ranks drew.
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, 1))
        t = self.exams_per_batch
        for b in range(len(self)):
            parts = []
            for exam in exams[b * t : (b + 1) * t]:
                exam_rows = self._rows[self._starts[exam] : self._starts[exam + 1]]
                cap = self.max_images_per_exam
                if cap and len(exam_rows) > cap:
                    exam_rows = np.sort(rng.choice(exam_rows, size=cap, replace=False))
                parts.append(exam_rows)
            yield np.concatenate(parts)
