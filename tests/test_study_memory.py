"""Memory a trial process gives back between trials (uslearn/study/memory.py).

The study-level check (a reused Tune trial process does not grow with each trial) is in
tests/test_study_ray.py; this one shows the mechanism in one process, without Ray.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision

from uslearn.study.memory import process_memory, release_freed_memory


def train_steps(model: torch.nn.Module) -> None:
    """Two Adam steps on 256 images at 32 px (half a cpu-demo batch)."""
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(2):
        loss = model(torch.rand(256, 3, 32, 32)).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_what_a_finished_training_thread_freed_goes_back_to_the_system():
    if process_memory() is None or release_freed_memory() is None:
        pytest.skip("needs Linux's /proc and glibc's malloc_trim")
    model = torchvision.models.resnet18(num_classes=10)
    # As Tune runs a trial: on a thread of its own that ends with the trial.
    thread = threading.Thread(target=train_steps, args=(model,))
    thread.start()
    thread.join()
    held = process_memory().anon
    assert release_freed_memory() is True
    # Measured: 270-310 MiB of activations and gradients that glibc had kept, given back.
    assert process_memory().anon < held - 100


def test_process_memory_reads_this_process_and_none_for_a_gone_one():
    memory = process_memory()
    if memory is None:
        pytest.skip("needs Linux's /proc")
    assert 0 < memory.anon <= memory.rss
    assert process_memory(2**22 + 1) is None  # above Linux's pid_max
