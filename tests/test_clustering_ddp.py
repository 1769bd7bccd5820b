"""PICA / LSD under DDP: 2 ranks × B images give the loss and gradients of 1 process × 2B.

The partition matrix M and the cluster sizes Z are statistics of the whole batch; the
clustering step gathers every rank's log-probabilities (``strategies.distributed.gather_rows``).
Real parts: two gloo processes on the CPU, the real ResNet18 network and clustering strategy on
the tiny phantom. BatchNorm runs on its running statistics here (``eval()``): its per-rank
batch statistics are a separate difference (SyncBatchNorm exists only for GPUs), not what
this test is about.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow

# Ranks hold different image counts, as exam batches do.
SPLIT = (5, 7)
STRATEGIES = ("pica", "lsd")


def _global_views(data_path: str, strategy: str, seed: int = 0):
    """Return (strategy, model, view_a, view_b) of one global batch, identical in every process."""
    from uslearn import augment, models
    from uslearn.data.dataset import Dataset
    from uslearn.data.loader import load_batch
    from uslearn.strategies import clustering
    from uslearn.strategies.context import make_context
    from uslearn.strategies.registry import parse_config

    world = dist.get_world_size() if dist.is_initialized() else 1
    cfg, own = parse_config(
        {"strategy": strategy, "lam": 2.0, "k": 5, "image_size": 32, "device": "cpu",
         "seed": seed, "workers": world}
    )  # fmt: skip
    data = Dataset.open(data_path)
    ctx = make_context(cfg)  # seeds torch: the same initial weights in every process
    step = clustering.build(cfg, own, data, ctx)
    model = models.build_network(step.heads, init="random")
    model.eval()  # BatchNorm on running statistics: see the module docstring
    rows = np.arange(sum(SPLIT))
    images = load_batch(data.images, rows)
    view_a, view_b = augment.pica_views(images, 32, torch.Generator().manual_seed(123))
    return step, model, view_a, view_b


def _loss_and_grads(step, net, view_a, view_b, gather: bool = True) -> tuple[float, torch.Tensor]:
    """Return the step's loss and the parameter gradients after backward (DDP-averaged)."""
    from uslearn import losses

    model = getattr(net, "module", net)
    model.zero_grad(set_to_none=True)
    if gather:
        loss, _ = step.step(net, {"x": torch.cat([view_a, view_b])})
    else:  # what each rank computed before the gather: the loss of its own shard
        log_p = net(torch.cat([view_a, view_b]))["cluster"].float().log_softmax(dim=1)
        loss, _ = losses.pica_loss(*log_p.chunk(2), 2.0, prior=step.prior, alpha=step.alpha)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads


def _rank(rank: int, world: int, port: int, data_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start = sum(SPLIT[:rank])
        mine = slice(start, start + SPLIT[rank])
        results = {}
        for strategy in STRATEGIES:
            step, model, view_a, view_b = _global_views(data_path, strategy)
            net = torch.nn.parallel.DistributedDataParallel(model)
            loss, grads = _loss_and_grads(step, net, view_a[mine], view_b[mine])
            _, local = _loss_and_grads(step, net, view_a[mine], view_b[mine], gather=False)
            results[strategy] = {"loss": loss, "grads": grads, "local_grads": local}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_give_the_loss_and_gradients_of_one_process_over_the_global_batch(
    tiny_phantom, tmp_path
):
    out = str(tmp_path / "rank")
    mp.start_processes(
        _rank,
        args=(2, _free_port(), str(tiny_phantom), out),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for strategy in STRATEGIES:
        step, model, view_a, view_b = _global_views(str(tiny_phantom), strategy)
        loss, grads = _loss_and_grads(step, model, view_a, view_b)
        assert grads.abs().max() > 1e-3  # not trivially equal
        for got in (r[strategy] for r in ranks):
            assert got["loss"] == pytest.approx(loss, abs=1e-5), strategy
            # DDP averaged the ranks' gradients; the gather's backward made them the whole's.
            torch.testing.assert_close(got["grads"], grads, rtol=1e-5, atol=1e-5)
            # Each rank on its own shard (before the gather): gradients visibly differ.
            assert (got["local_grads"] - grads).abs().max() > 100 * 1e-5, strategy


def test_gather_rows_is_the_identity_in_one_process():
    from uslearn.strategies.distributed import gather_rows

    rows = torch.randn(3, 4, requires_grad=True)
    assert gather_rows(rows) is rows
