"""Train-step speed of the two grayscale stems: gray repeated to 3 channels vs a 1-channel conv1.

    python benchmarks/model_stem.py                   # auto device; CPU: 128 px, batch 32
    python benchmarks/model_stem.py --device cuda --size 224 --batch 208 --bf16 --channels-last

One step = forward + BCE + backward + Adam on random (B, 1, S, S) inputs, as in fine-tuning.
Prints img/s of each stem and their ratio, measured in the same run. Needs torch + torchvision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uslearn.models import Network  # noqa: E402


def make_step(stem: str, args, device: torch.device):
    """Return a function running one full train step of a Network with the given stem."""
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = Network({"multilabel": 7}, stem=stem).to(device).to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    x = x.contiguous(memory_format=fmt)
    y = (torch.rand(args.batch, 7, device=device) < 0.3).float()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.binary_cross_entropy_with_logits(net(x)["multilabel"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, device: torch.device) -> float:
    """Return the seconds one call of step takes (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def stem_rates(args, device: torch.device) -> dict[str, float]:
    """Return stem -> median img/s; the stems alternate step by step so shared load hits both."""
    steps = {stem: make_step(stem, args, device) for stem in ("repeat", "gray")}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    seconds = {stem: [] for stem in steps}
    for _ in range(args.repeats):
        for stem, step in steps.items():
            seconds[stem].append(timed(step, device))
    return {stem: args.batch / statistics.median(s) for stem, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="default 224 on CUDA, 128 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 208 on CUDA, 32 on CPU")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        # On a shared, busy CPU a single thread avoids OpenMP barrier stalls that swamp timings.
        torch.set_num_threads(args.threads)
    name = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = torch.device(name)
    cuda = device.type == "cuda"
    args.size = args.size or (224 if cuda else 128)
    args.batch = args.batch or (208 if cuda else 32)
    if cuda:
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"# {where}, torch {torch.__version__}, {args.size} px, batch {args.batch}, "
        f"bf16 {args.bf16}, channels_last {args.channels_last}, median of {args.repeats}"
    )
    rates = stem_rates(args, device)
    for stem, rate in rates.items():
        print(f"{stem:8s} {rate:10.1f} img/s")
    print(f"gray / repeat = {rates['gray'] / rates['repeat']:.3f}")


if __name__ == "__main__":
    main()
