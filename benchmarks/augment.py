"""Throughput of each augmentation pipeline (img/s) on CPU, or on CUDA when available.

    python benchmarks/augment.py                      # 224 px, batch 208, auto device
    python benchmarks/augment.py --device cpu --batch 64 --repeats 5

Input is a uint8 (B, H, W) batch already on the device (as the loader delivers it); every
pipeline returns float (B, 1, S, S). PICA makes two views per image: its figure counts input
images, so its views/s are twice that. Needs only torch + torchvision (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uslearn import augment  # noqa: E402


def pipelines(size: int):
    """Return name -> function(x, generator) of every pipeline."""
    return {
        "to_input (eval)": lambda x, g: augment.to_input(x, size),
        "weak_view": lambda x, g: augment.weak_view(x, size, g),
        "strong_view": lambda x, g: augment.strong_view(x, size, g),
        "pica_views (2 views)": lambda x, g: augment.pica_views(x, size, g),
    }


def measure(fn, x, generator, device: torch.device, warmup: int, repeats: int) -> float:
    """Return the median img/s of fn over ``repeats`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn(x, generator)
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(x.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--size", type=int, default=224, help="output side S")
    parser.add_argument("--stored", type=int, default=None, help="stored side H (default S)")
    parser.add_argument("--batch", type=int, default=208)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        # On a shared, busy CPU a single thread avoids OpenMP barrier stalls that swamp timings.
        torch.set_num_threads(args.threads)
    name = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = torch.device(name)
    stored = args.stored or args.size
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (args.batch, stored, stored), dtype=torch.uint8, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# {where}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, {stored} px -> {args.size} px, median of {args.repeats}"
    )
    print(f"{'pipeline':24s} {'img/s':>10s}")
    for label, fn in pipelines(args.size).items():
        rate = measure(fn, x, generator, device, args.warmup, args.repeats)
        print(f"{label:24s} {rate:10.0f}")


if __name__ == "__main__":
    main()
