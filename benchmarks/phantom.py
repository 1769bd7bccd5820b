"""Phantom generation speed, memory bound, and the per-view picture of docs/PHANTOM.md.

    python benchmarks/phantom.py speed  [--exams 160] [--size 128] [--workers 1 2]
    python benchmarks/phantom.py memory [--exams 200 800] [--size 224]
    python benchmarks/phantom.py views  --out docs/img/phantom_views.png [--size 160]
    python benchmarks/phantom.py gallery --out docs/img/phantom_gallery.png

`speed` reports wall-clock images/s and CPU seconds per image (this process and its worker
processes), so a figure measured on a busy machine can still be read: images/s per core =
1 / CPU s per image. `memory` generates the paper preset's settings (224 px) for growing
numbers of exams in fresh processes and reports their peak resident memory: flat means the
paper preset (~89 830 frames, 4.5 GB store) streams to disk with bounded RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def speed(exams: int, size: int, workers: list[int]) -> None:
    """Print images/s (wall) and CPU s/image of generating ``exams`` exams at ``size`` px."""
    from uslearn.phantom import generate_phantom

    with tempfile.TemporaryDirectory() as tmp:
        generate_phantom(Path(tmp) / "warm", preset="demo", exams=8, size=size, workers=1)
        for n in workers:
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            path = generate_phantom(
                Path(tmp) / f"w{n}", preset="demo", exams=exams, size=size, workers=n
            )
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            images = json.loads((path / "meta.json").read_text())["n_images"]
            row = {
                "size": size,
                "workers": n,
                "images": images,
                "img_per_s": round(images / wall, 1),
                "cpu_ms_per_img": round(1000 * cpu / images, 3),
                "img_per_cpu_s": round(images / cpu, 1),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "cores": os.cpu_count(),
            }
            print(json.dumps(row), flush=True)


def _peak_rss_mib(exams: int, size: int, workers: int, out: Path) -> float:
    """Return the peak RSS (MiB) of a fresh process (and its workers) generating a phantom."""
    code = (
        "import resource, sys\n"
        "from uslearn.phantom import generate_phantom\n"
        f"generate_phantom({str(out)!r}, preset='paper', exams={exams}, size={size},"
        f" workers={workers}, overwrite=True)\n"
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(max(own, kids))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    return int(result.stdout.split()[-1]) / 1024


def memory(exams: list[int], size: int, workers: int) -> None:
    """Print the peak RSS for each database size: it must not grow with the number of exams."""
    with tempfile.TemporaryDirectory() as tmp:
        for n in exams:
            start = time.perf_counter()
            peak = _peak_rss_mib(n, size, workers, Path(tmp) / f"paper{n}")
            store = (Path(tmp) / f"paper{n}" / "images.u8").stat().st_size / 2**20
            row = {
                "exams": n,
                "size": size,
                "workers": workers,
                "store_mib": round(store),
                "peak_rss_mib": round(peak),
                "minutes": round((time.perf_counter() - start) / 60, 2),
            }
            print(json.dumps(row), flush=True)


SHORT = {"gallbladder": "GB", "pancreas": "pancr."}


def views(out: Path, size: int, per_view: int = 6, seed: int = 11) -> None:
    """Write a grid: one row per standard view, frames from different patients and vendors."""
    import dataclasses

    import torch
    from PIL import Image, ImageDraw

    from uslearn.data.dataset import CLASSES
    from uslearn.phantom.bmode import render
    from uslearn.phantom.exams import plan_exams
    from uslearn.phantom.generate import build_scenes
    from uslearn.phantom.labels import labels_from_visible
    from uslearn.phantom.views import VIEWS

    exams = plan_exams(seed, per_view * 3)
    label_w = 150
    sheet = Image.new("L", (label_w + per_view * size, len(VIEWS) * (size + 14)), 255)
    pen = ImageDraw.Draw(sheet)
    for row, view in enumerate(VIEWS):
        # One exam per column, vendors cycling, so each row shows the scanners' variety.
        chosen = [dataclasses.replace(e, views=(view,), vendor=i % 5) for i, e in enumerate(exams)]
        slots, params, overlays = build_scenes(chosen[:per_view], 1.0)
        frames = render(slots, params, overlays, size, torch.Generator().manual_seed(row))
        labels = labels_from_visible(frames.visible)
        top = row * (size + 14)
        pen.text((4, top + size // 2 - 6), view.replace("_", " "), fill=0)
        for col, image in enumerate(frames.images):
            left = label_w + col * size
            sheet.paste(Image.fromarray(image), (left, top))
            tags = " + ".join(
                SHORT.get(CLASSES[j], CLASSES[j]) for j in np.flatnonzero(labels[col])
            )
            pen.text((left + 2, top + size + 1), tags, fill=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out}")


def gallery(out: Path, data: Path, size: int) -> None:
    """Write the datasets room's per-class gallery of a demo phantom at ``size`` px."""
    from uslearn.data.dataset import Dataset
    from uslearn.data.gallery import write_gallery
    from uslearn.phantom import generate_phantom

    if not data.exists():
        generate_phantom(data, preset="demo", size=size)
    print(f"wrote {write_gallery(Dataset.open(data), out, per_class=6, split='test')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--exams", type=int, default=160)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p = sub.add_parser("memory")
    p.add_argument("--exams", type=int, nargs="+", default=[200, 800])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("views")
    p.add_argument("--out", type=Path, default=Path("docs/img/phantom_views.png"))
    p.add_argument("--size", type=int, default=160)
    p = sub.add_parser("gallery")
    p.add_argument("--out", type=Path, default=Path("docs/img/phantom_gallery.png"))
    p.add_argument("--data", type=Path, default=Path("runs/phantom_gallery_demo128"))
    p.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.exams, args.size, args.workers)
    elif args.what == "memory":
        memory(args.exams, args.size, args.workers)
    elif args.what == "views":
        views(args.out, args.size)
    else:
        gallery(args.out, args.data, args.size)


if __name__ == "__main__":
    main()
