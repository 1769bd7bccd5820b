"""Exam batch sampler (paper Sec. 3.2) and batch loading from the memory map."""

import numpy as np
import pytest
import torch

from uslearn.data.dataset import DatasetError
from uslearn.data.loader import load_batch
from uslearn.data.sampler import ExamBatchSampler


def make_exams(sizes, first_row=100):
    """Return (exam_ids, rows): exam k has sizes[k] rows, rows interleaved across exams."""
    exam_ids = np.concatenate([[f"e{k}"] * n for k, n in enumerate(sizes)])
    rows = first_row + np.random.default_rng(1).permutation(len(exam_ids))
    return exam_ids, rows


def exams_in(batch, exam_ids, rows):
    lookup = dict(zip(rows.tolist(), exam_ids.tolist()))
    return {lookup[r] for r in batch.tolist()}


def test_batch_holds_t_whole_exams_and_epoch_covers_every_row_once():
    exam_ids, rows = make_exams([3, 1, 4, 2, 5, 2, 3])
    sampler = ExamBatchSampler(exam_ids, rows, exams_per_batch=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # 7 exams: 3 + 3 + the kept partial batch of 1
    assert [len(exams_in(b, exam_ids, rows)) for b in batches] == [3, 3, 1]
    assert all(b.dtype == np.int64 for b in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.sort(rows))


def test_rows_of_one_exam_are_contiguous_and_ascending_in_a_batch():
    exam_ids, rows = make_exams([4, 4, 4])
    lookup = dict(zip(rows.tolist(), exam_ids.tolist()))
    for batch in ExamBatchSampler(exam_ids, rows, exams_per_batch=3, seed=3):
        labels = [lookup[r] for r in batch.tolist()]
        starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
        assert len(starts) == 3
        for a, b in zip(starts, [*starts[1:], len(batch)]):
            assert list(batch[a:b]) == sorted(batch[a:b])


def test_same_seed_and_epoch_give_same_batches_and_epochs_differ():
    exam_ids, rows = make_exams([2] * 20)
    a = ExamBatchSampler(exam_ids, rows, exams_per_batch=4, seed=7)
    b = ExamBatchSampler(exam_ids, rows, exams_per_batch=4, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    b.set_epoch(4)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_cap_takes_a_random_subset_of_large_exams_that_changes_per_epoch():
    exam_ids, rows = make_exams([10, 2])
    sampler = ExamBatchSampler(exam_ids, rows, exams_per_batch=2, max_images_per_exam=3, seed=0)
    subsets = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        (batch,) = list(sampler)
        assert len(batch) == 3 + 2
        big = [r for r in batch.tolist() if exam_ids[list(rows).index(r)] == "e0"]
        subsets.append(tuple(big))
    assert len(set(subsets)) > 1


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_disjoint_exams_and_equal_batch_counts(world_size):
    exam_ids, rows = make_exams([1, 2, 3] * 7)  # 21 exams
    samplers = [
        ExamBatchSampler(exam_ids, rows, 2, seed=5, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for s in samplers:
        s.set_epoch(2)
    assert len({len(s) for s in samplers}) == 1
    assert len({len(list(s)) for s in samplers}) == 1
    per_rank = [set(s.exams_of_rank().tolist()) for s in samplers]
    covered = set().union(*per_rank)
    assert covered == set(range(21))
    overlap = sum(len(p) for p in per_rank) - len(covered)
    assert overlap == (-21) % world_size  # only the wrap-around padding repeats exams


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exams_per_batch": 0}, "exams_per_batch"),
        ({"exams_per_batch": 2, "max_images_per_exam": -1}, "max_images_per_exam"),
        ({"exams_per_batch": 2, "rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_bad_sampler_arguments_raise_naming_the_argument(kwargs, message):
    exam_ids, rows = make_exams([2, 2])
    with pytest.raises(DatasetError, match=message):
        ExamBatchSampler(exam_ids, rows, **kwargs)


def test_empty_rows_raise_instead_of_yielding_nothing():
    with pytest.raises(DatasetError, match="no rows"):
        ExamBatchSampler([], np.array([], dtype=np.int64), exams_per_batch=2)


def test_load_batch_keeps_row_order_and_values():
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    rows = np.array([7, 2, 2, 9, 0])
    batch = load_batch(images, rows)
    assert batch.dtype == torch.uint8 and batch.shape == (5, 8, 8)
    np.testing.assert_array_equal(batch.numpy(), images[rows])


def test_load_batch_reads_from_a_memory_map(tmp_path):
    data = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    data.tofile(tmp_path / "store.u8")
    store = np.memmap(tmp_path / "store.u8", dtype=np.uint8, mode="r", shape=(6, 4, 4))
    np.testing.assert_array_equal(load_batch(store, [5, 1]).numpy(), data[[5, 1]])


def test_load_batch_rejects_out_of_range_rows_and_wrong_dtype():
    images = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(DatasetError, match="store has 3 rows"):
        load_batch(images, [0, 3])
    with pytest.raises(DatasetError, match="uint8"):
        load_batch(images.astype(np.float32), [0])


@pytest.mark.gpu
def test_load_batch_moves_to_cuda_in_one_pinned_copy():
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    batch = load_batch(images, [3, 1], device="cuda")
    assert batch.device.type == "cuda"
    np.testing.assert_array_equal(batch.cpu().numpy(), images[[3, 1]])
