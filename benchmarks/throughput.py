"""End-to-end training throughput of each strategy vs the bare ResNet18 train step.

End-to-end = the shared loop's own ``train/img_per_s`` (exam sampling, batch loading,
on-device augmentation, forward/backward/Adam, logging), measured over the second evaluation
window so start-up is excluded. Bare = forward + backward + Adam on random tensors of the same
batch shape, same precision and memory format, in the same process. Prints the ratio.
No Ray / MLflow imports: runs on a GPU machine with torch + torchvision only.

    python benchmarks/throughput.py [--device cuda] [--size 224] [--steps 30] [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from uslearn import models
from uslearn.phantom import ensure_phantom
from uslearn.strategies import run


def bare_step_img_per_s(
    heads: dict[str, int], batch: int, size: int, device: torch.device, steps: int
) -> float:
    """Return img/s of forward + backward + Adam on random (batch, 1, size, size) inputs."""
    model = models.build_network(heads).to(device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = sum(v.float().logsumexp(dim=1).mean() for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


class _Enough(Exception):
    """Raised from the report callback once two timing windows are in."""


def batch_shape(name: str, cfg: dict, data) -> tuple[dict[str, int], int]:
    """Return (heads, images in one training forward pass) of a strategy's first batch."""
    from uslearn.strategies import entry, parse_config
    from uslearn.strategies.context import make_context

    train_cfg, own = parse_config(cfg)
    strategy = entry(name).load().build(train_cfg, own, data=data, ctx=make_context(train_cfg))
    return strategy.heads, int(next(strategy.batches(0))["x"].shape[0])


def main() -> None:
    from uslearn.config import field_names
    from uslearn.strategies import entry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224 if torch.cuda.is_available() else 64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing window")
    parser.add_argument("--exams", type=int, default=8, help="exams per batch (16 = the paper's)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (both sides)"
    )
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--strategies", nargs="+", default=["supervised", "pica", "fixmatch_two"])
    args = parser.parse_args()
    device = torch.device(args.device)
    data = ensure_phantom(args.data, preset="demo")
    print(f"device={device} size={args.size} exams/batch={args.exams} torch={torch.__version__}")
    for name in args.strategies:
        strategy = entry(name)
        cfg = {
            "strategy": name,
            "device": args.device,
            "image_size": args.size,
            "max_images_per_exam": 0,
            "eval_every": args.steps,
            "compile": args.compile,
            # Long enough never to end, early stopping off: two timing windows end the run.
            strategy.unit: 100_000,
            **{draw.exams_key: args.exams for draw in strategy.draws},
        }
        if "patience" in field_names(strategy.config):
            cfg["patience"] = 100_000
        windows: list[dict] = []

        def collect(metrics, checkpoint, windows=windows):
            windows.append(metrics)
            if len(windows) == 2:
                raise _Enough

        with tempfile.TemporaryDirectory() as out, contextlib.suppress(_Enough):
            run(cfg, data, report=collect, out_dir=out)
        heads, images = batch_shape(name, cfg, data)
        e2e = windows[1]["train/img_per_s"]
        bare = bare_step_img_per_s(heads, images, args.size, device, args.steps)
        print(
            f"{name:13s} {images:4d} img/step  end-to-end {e2e:8.0f} img/s  bare step {bare:8.0f} img/s  ratio {e2e / bare:4.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
