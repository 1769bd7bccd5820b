"""Run one strategy as N local DDP processes (gloo on CPU, nccl on GPUs) without Ray.

Ray Train does this on a cluster (uslearn/study); this launcher serves ``uslearn train
--workers N`` on one machine and the DDP-equivalence test.
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
