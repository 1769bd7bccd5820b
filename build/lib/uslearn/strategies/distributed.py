"""DDP helpers: batch statistics over every rank, and N local DDP processes without Ray.

``gather_rows`` lets a loss that is a statistic of the whole batch (PICA's partition matrix
and cluster sizes) see the global batch under DDP, differentiably. ``run_local_ddp`` runs one
strategy as N local processes (gloo on CPU, nccl on GPUs); Ray Train does this on a cluster
(uslearn/study), this launcher serves ``uslearn train --workers N`` and the DDP tests.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from uslearn.data.writer import die_with_parent
from uslearn.errors import EnvError, UserError, is_environment_error


class _GatherRows(torch.autograd.Function):
    """All-gather of (n_r, ...) row blocks whose backward returns each rank its rows' gradient.

    Every rank computes the same loss from the gathered rows, so the gradient reaching rank
    r's rows is the sum over ranks of d(loss_s)/d(rows_r) = W · d(loss)/d(rows_r): the
    backward all-reduces (sums) the gathered gradient and keeps its own block. DDP then
    averages the parameter gradients over the W ranks, which cancels the factor W and leaves
    exactly the gradient of one process over the global batch.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        # Exam batches differ in image count between ranks: gather the sizes, pad, unpad.
        count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        blocks = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(blocks, padded)
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([block[:size] for block, size in zip(blocks, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Return the rows of every DDP rank concatenated in rank order (``rows`` itself alone).

    Differentiable: used with DDP's gradient averaging, a loss of the gathered rows gives the
    same loss and parameter gradients as one process holding the global batch. Every rank
    must call it at the same point (a collective); ranks may hold different row counts.

    Args:
        rows: (n_r, ...) this rank's rows.

    Returns:
        (Σ_r n_r, ...) rows of ranks 0, 1, ...
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    return _GatherRows.apply(rows)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    config: dict,
    data: str,
    out_dir: str,
    queue,
    launcher: int,
) -> None:
    # A killed launcher (SIGKILL, a lost terminal) must not leave its workers training.
    die_with_parent()
    if os.getppid() != launcher:  # it died before the line above took effect
        os._exit(1)
    from uslearn.strategies.runner import run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    use_cuda = torch.cuda.is_available() and config.get("device", "auto") != "cpu"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    try:
        queue.put((rank, run(config, data, out_dir=out_dir)))
    except (UserError, EnvError, OSError) as err:
        if not isinstance(err, OSError) or is_environment_error(err):
            queue.put((rank, err))  # the launcher raises it as the command's one line
        raise
    finally:
        dist.destroy_process_group()


def run_local_ddp(
    config: dict, data: str | Path, world_size: int, out_dir: str | Path
) -> list[dict[str, float]]:
    """Return each rank's final metrics after training ``config`` on ``world_size`` local processes.

    ``batch_exams`` is per rank: the global batch is ``world_size × batch_exams`` exams. The
    processes die with this one (Linux), and stop together when one of them fails.

    Raises:
        UserError, EnvError: what a rank raised (the lowest such rank's), for one error line.
    """
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    try:
        mp.start_processes(
            _worker,
            args=(world_size, port, dict(config), str(data), str(out_dir), queue, os.getpid()),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = []
        while not queue.empty():
            rank, item = queue.get()
            if isinstance(item, BaseException):
                errors.append((rank, item))
        if errors:
            raise min(errors, key=lambda found: found[0])[1] from None
        raise
    results = dict(queue.get() for _ in range(world_size))
    return [results[rank] for rank in range(world_size)]
