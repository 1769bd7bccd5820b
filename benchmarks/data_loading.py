"""Data-path figures: batch assembly, PNG import speed, import memory, duplicate check.

    python benchmarks/data_loading.py              # all figures (about 2 minutes on 2 cores)
    python benchmarks/data_loading.py --quick      # smaller sizes, for a smoke run

Prints:
1. batch assembly from the store (ExamBatchSampler + load_batch, 128 px, one thread) in img/s,
   next to a per-image PIL path measured in the same run (the ratio is the point);
2. PNG import (640 x 480 RGB frames -> 224 px) in img/s with 1 and 2 worker processes;
3. peak RSS of an import of n and 4n images (in fresh processes): flat = bounded memory, and
   the RSS growth of writing the store through a memory map vs. os.pwrite (why pwrite);
4. ``uslearn data check`` duplicate search time on the 128 px store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uslearn.data.dataset import SPLITS  # noqa: E402
from uslearn.data.duplicates import cross_split_duplicates  # noqa: E402
from uslearn.data.images import Preprocess  # noqa: E402
from uslearn.data.importers import ImportSettings, import_folder  # noqa: E402
from uslearn.data.sampler import ExamBatchSampler  # noqa: E402


def rss_mb(field: str = "VmRSS") -> float:
    """Return this process's resident set size (VmRSS) or its peak (VmHWM) in MB, from /proc.

    Not ``getrusage``'s ru_maxrss: a child started by fork + exec inherits the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_store(path: Path, n: int, size: int) -> np.ndarray:
    """Write and return (read-only memmap) an (n, size, size) uint8 store of random images."""
    store = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, size, size))
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        store[start : start + 1000] = rng.integers(
            0, 256, (min(1000, n - start), size, size), np.uint8
        )
    store.flush()
    del store
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size))


def batch_assembly(images: np.ndarray, seconds: float) -> tuple[float, float]:
    """Return (img/s of sampler + load_batch, img/s of a per-image PIL path), one thread."""
    import torch  # here, so that the memory-measuring child processes do not load it

    from uslearn.data.loader import load_batch

    torch.set_num_threads(1)
    n = len(images)
    exam_ids = np.repeat(np.arange(n // 13 + 1), 13)[:n]  # ~13 images per exam (the paper's mean)
    sampler = ExamBatchSampler(exam_ids, np.arange(n), exams_per_batch=16, seed=0)

    def run(assemble) -> float:
        done, start, epoch = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            sampler.set_epoch(epoch)
            for rows in sampler:
                done += len(assemble(rows))
                if time.perf_counter() - start > seconds:
                    break
            epoch += 1
        return done / (time.perf_counter() - start)

    def per_image_pil(rows):
        tiles = [torch.from_numpy(np.asarray(Image.fromarray(np.asarray(images[r])))) for r in rows]
        return torch.stack(tiles)

    run(lambda rows: load_batch(images, rows))  # warm the page cache
    return run(lambda rows: load_batch(images, rows)), run(per_image_pil)


def ultrasound_png(path: Path, seed: int) -> None:
    """Write a 640 x 480 RGB PACS-like frame: speckled sector, black surround, yellow text."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    angle = np.arctan2(xx - 320, yy + 40)
    radius = np.hypot(xx - 320, yy + 40)
    sector = (np.abs(angle) < 0.6) & (radius > 80) & (radius < 500)
    speckle = rng.rayleigh(40, (480, 640)) * (0.6 + 0.4 * np.sin(yy / 37.0 + seed) ** 2)
    gray = np.where(sector, np.clip(speckle, 0, 255), 0).astype(np.uint8)
    frame = np.repeat(gray[..., None], 3, axis=2)
    frame[10:22, 10:160] = (230, 230, 0)
    Image.fromarray(frame).save(path)


def make_png_export(root: Path, distinct: int, total: int) -> Path:
    """Write ``distinct`` frames and hard links up to ``total`` files; return the labels CSV."""
    (root / "png").mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        ultrasound_png(root / "png" / f"f{i:05d}.png", i)
    rows = []
    for i in range(total):
        name = f"f{i:05d}.png"
        if i >= distinct:
            os.link(root / "png" / f"f{i % distinct:05d}.png", root / "png" / name)
        rows.append(
            {"path": name, "patient_id": f"p{i // 26}", "exam_id": f"e{i // 13}", "labels": ""}
        )
    csv = root / f"labels_{total}.csv"
    pd.DataFrame(rows).head(total).to_csv(csv, index=False)
    return csv


def import_rate(root: Path, csv: Path, workers: int) -> tuple[float, float]:
    """Return (img/s wall clock, img per CPU-second of this process) of importing every CSV
    row at 224 px with ``workers`` processes. The CPU figure is the per-core rate, unaffected
    by other load on the machine; it means something only with one worker (in-process)."""
    settings = ImportSettings(preprocess=Preprocess(size=224), workers=workers, overwrite=True)
    start, cpu = time.perf_counter(), time.process_time()
    out = import_folder(root / "png", csv, root / f"ds_w{workers}", "bench", settings)
    n = json.loads((out / "import_report.json").read_text())["imported"]
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def child_import_peak_rss(root: str, csv: str) -> None:
    """(Run in a fresh process.) Import with one worker; print JSON of peak RSS in MB."""
    before = rss_mb()
    settings = ImportSettings(preprocess=Preprocess(size=224), workers=1, overwrite=True)
    import_folder(Path(root) / "png", csv, Path(root) / "ds_rss", "bench", settings)
    peak = rss_mb("VmHWM")
    print(json.dumps({"before": before, "peak": peak}))


def child_store_write_rss(root: str, n: int, mode: str) -> None:
    """(Run in a fresh process.) Write n 224 px images via memmap or pwrite; print RSS growth."""
    path = Path(root) / f"store_{mode}.u8"
    size = 224
    block = np.full((100, size, size), 7, np.uint8)
    before = rss_mb()
    if mode == "memmap":
        store = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, size, size))
        for start in range(0, n, 100):
            store[start : start + 100] = block
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, n * size * size)
        for start in range(0, n, 100):
            os.pwrite(fd, block.tobytes(), start * size * size)
        os.close(fd)
    print(json.dumps({"growth": rss_mb() - before}))


def in_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "_import_rss":
        return child_import_peak_rss(rest[1], rest[2])
    if rest and rest[0] == "_store_rss":
        return child_store_write_rss(rest[1], int(rest[2]), rest[3])
    n_store, n_png, n_rss = (4000, 60, 400) if args.quick else (20000, 300, 2000)
    with tempfile.TemporaryDirectory(prefix="uslearn-bench-") as tmp:
        root = Path(tmp)
        images = make_store(root / "store.u8", n_store, 128)
        fast, pil = batch_assembly(images, seconds=2 if args.quick else 5)
        print(
            f"batch assembly, 128 px, 1 thread: {fast:,.0f} img/s "
            f"(per-image PIL path {pil:,.0f} img/s; ratio {fast / pil:.1f}x; target >= 20,000)"
        )

        # The paper's proportions: 2 735 labelled, 84 967 unlabelled, 886 val, 1 242 test.
        shares = np.array([2735, 84967, 886, 1242]) / 89830
        splits = np.random.default_rng(0).choice(np.array(SPLITS), n_store, p=shares)
        start = time.perf_counter()
        identical, near, _ = cross_split_duplicates(images, splits)
        print(
            f"duplicate search (check), {n_store:,} images of 128 px, paper's split shares: "
            f"{time.perf_counter() - start:.1f} s ({len(identical)} identical, {len(near)} near pairs)"
        )

        csv = make_png_export(root, n_png, max(n_png, n_rss * 4))
        small = root / "labels_png.csv"
        pd.read_csv(csv).head(n_png).to_csv(small, index=False)
        pd.read_csv(csv).head(8).to_csv(small.with_name("warm.csv"), index=False)
        wall, per_core = import_rate(root, small, 1)
        print(
            f"PNG import 640x480 -> 224 px, 1 worker: {wall:,.1f} img/s wall clock, "
            f"{per_core:,.1f} img per CPU-second (the per-core rate)"
        )
        import_rate(root, small.with_name("warm.csv"), 2)  # starts the fork server once
        wall, _ = import_rate(root, small, 2)
        print(f"PNG import 640x480 -> 224 px, 2 workers: {wall:,.1f} img/s wall clock")

        peaks = {}
        for n in (n_rss, 4 * n_rss):
            part = root / f"labels_rss_{n}.csv"
            pd.read_csv(csv).head(n).to_csv(part, index=False)
            peaks[n] = in_child("_import_rss", str(root), str(part))
            print(
                f"import of {n:,} PNG frames (1 worker): peak RSS {peaks[n]['peak']:.0f} MB "
                f"(interpreter + libraries before: {peaks[n]['before']:.0f} MB)"
            )
        slope = (peaks[4 * n_rss]["peak"] - peaks[n_rss]["peak"]) / (3 * n_rss)
        print(
            f"RSS slope {slope * 1000:.2f} MB per 1,000 images -> 100,000 images: "
            f"~{peaks[4 * n_rss]['peak'] + slope * (100_000 - 4 * n_rss):.0f} MB (limit 2,048 MB)"
        )
        for mode in ("memmap", "pwrite"):
            growth = in_child("_store_rss", str(root), str(4 * n_rss), mode)["growth"]
            print(
                f"writing {4 * n_rss:,} images of 224 px to the store via {mode}: RSS +{growth:.0f} MB"
            )


if __name__ == "__main__":
    main()
