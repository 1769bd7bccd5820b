"""Throughput of ``uslearn predict``: dataset rows, image files (decoding included), Ray Data.

Each path is timed end to end as the command runs it (``score.score_source`` /
``ray_batch.score_source_ray``) and printed beside the bare forward pass of the same network
on random tensors of the same batch shape, measured in the same process (the ratio is what
the path keeps of the model's speed). The weights are random: they do not change the speed.

    python benchmarks/predict.py [--data DIR] [--size PX] [--files N] [--ray] [--device cuda]

Default data: the demo phantom (generated under data/demo once); --size is the network input
(default: the stored size).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uslearn.data.dataset import CLASSES, Dataset
from uslearn.inference import sources
from uslearn.inference.package import ModelPackage, write_package
from uslearn.inference.score import score_source
from uslearn.models import build_network
from uslearn.phantom import ensure_phantom


def random_package(data: Dataset, image_size: int, folder: Path) -> ModelPackage:
    """Return a package of a random-weight sigmoid-head ResNet18 for ``data`` (speed only)."""
    network = build_network({"multilabel": len(CLASSES)})
    torch.save({"model": network.state_dict()}, folder / "best.pt")
    (folder / "thresholds.json").write_text(json.dumps(dict.fromkeys(CLASSES, 0.5)))
    config = {"strategy": "supervised", "image_size": image_size}
    (folder / "config.json").write_text(json.dumps(config))
    write_package(folder, data)
    return ModelPackage.load(folder)


def bare_forward_img_per_s(package: ModelPackage, batch: int, windows: int = 3) -> float:
    """Return img/s of the network alone on random (batch, 1, S, S) inputs on its device.

    The best of ``windows`` windows of 4 batches each: on a shared machine the least
    disturbed window is the closest to the model's own speed.
    """
    size = package.image_size
    x = torch.rand(batch, 1, size, size, device=package.device)
    if package.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    amp = package.amp_dtype
    best = 0.0
    with torch.no_grad(), torch.autocast(package.device.type, dtype=amp, enabled=amp is not None):
        package.network.head(package.network.features(x))  # warm-up
        for _ in range(windows):
            if package.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(4):
                package.network.head(package.network.features(x))
            if package.device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 4 * batch / (time.perf_counter() - start))
    return best


def write_frames(data: Dataset, n: int, folder: Path) -> Path:
    """Write ``n`` stored images as RGB 'screen captures' (black margin, text) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.asarray(data.images[i % len(data)])
        frame = np.zeros((image.shape[0] + 48, image.shape[1] + 32, 3), np.uint8)
        frame[24:-24, 16:-16] = image[..., None]
        frame[4:10, 4:60] = 255
        Image.fromarray(frame).save(folder / f"{i:06d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="dataset directory (default: demo phantom)")
    parser.add_argument("--size", type=int, help="network input side (default: stored size)")
    parser.add_argument("--rows", type=int, default=2048, help="dataset rows to score")
    parser.add_argument("--files", type=int, default=512, help="PNG files to decode and score")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ray", action="store_true", help="also time the Ray Data pipeline")
    args = parser.parse_args()
    data = Dataset.open(args.data) if args.data else ensure_phantom(Path("data/demo"), "demo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model").mkdir()
        package = random_package(data, args.size or data.size, tmp / "model")
        package.to(args.device)
        bare = bare_forward_img_per_s(package, args.batch_size)
        rows = sources.from_dataset(data, None, package.preprocess)
        rows.items = rows.items[: args.rows]
        timed = {"dataset rows (memory map → model)": score_source(package, rows, args.batch_size)}
        folder = write_frames(data, args.files, tmp / "frames")
        files = sources.from_images(folder, package.preprocess, salt="benchmark")
        label = f"PNG files, {cores} decoding processes"
        timed[label] = score_source(package, files, args.batch_size, workers=cores)
        if args.ray:
            import ray

            from uslearn.inference.ray_batch import score_source_ray

            started = time.perf_counter()
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
            print(f"ray.init: {time.perf_counter() - started:.1f} s (not counted below)")
            package.to("cpu")
            timed["Ray Data, dataset rows (actor start-up included)"] = score_source_ray(
                package, rows, args.batch_size, device=args.device
            )
            ray.shutdown()
    print(
        f"\n{data.root.name}: stored {data.size} px, network input {package.image_size} px, "
        f"batch {args.batch_size}, device {package.device}, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'path':<52} {'images':>7} {'img/s':>8} {'÷ bare':>7}")
    print(f"{'bare forward (random tensors)':<52} {'':>7} {bare:>8.0f} {1.0:>7.2f}")
    for name, scored in timed.items():
        rate = scored.images_per_second
        print(f"{name:<52} {len(scored.image):>7} {rate:>8.0f} {rate / bare:>7.2f}")


if __name__ == "__main__":
    main()
