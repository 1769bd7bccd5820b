"""Staging rate: how fast a dataset is copied to node-local disk (uslearn/data/staging.py).

    python benchmarks/staging.py                 # a 512 MB store (about 30 s)
    python benchmarks/staging.py --mb 64         # smaller
    python benchmarks/staging.py --source DIR --stage DIR   # e.g. NFS → local NVMe on a node

Prints the staging rate in MB/s (copy + sha256 check of the fingerprint), next to a plain
copy of the same files measured in the same run (the ratio is the cost of the check). Here the
source and the stage share one local disk; on a cluster the source is NFS/EFS, usually slower.
The page cache is not dropped (that needs root and a quiet machine), so a second run reads the
source from memory: the first run of a fresh store is the honest one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uslearn.data.dataset import CLASSES, MANIFEST, STORE  # noqa: E402
from uslearn.data.staging import stage_dataset  # noqa: E402
from uslearn.data.writer import DatasetWriter  # noqa: E402

SIZE = 224  # px: the paper's image size, so MB map to images as on real data


def make_dataset(out: Path, megabytes: int) -> Path:
    """Write a dataset of random 224 px images of about ``megabytes`` MB; return its path."""
    n = max(1, megabytes * 1_000_000 // (SIZE * SIZE))
    rng = np.random.default_rng(0)
    with DatasetWriter(out, size=SIZE, capacity=n, source="benchmark") as writer:
        for start in range(0, n, 500):
            count = min(500, n - start)
            writer.write(start, rng.integers(0, 256, (count, SIZE, SIZE), np.uint8))
        manifest = pd.DataFrame(
            {
                "image_id": [f"i{i}" for i in range(n)],
                "patient_id": [f"p{i // 10}" for i in range(n)],
                "exam_id": [f"e{i // 10}" for i in range(n)],
                "split": "unlabelled",
                **{c: np.full(n, -1, np.int8) for c in CLASSES},
            }
        )
        return writer.commit(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="size of the generated store")
    parser.add_argument("--source", type=Path, help="an existing dataset (default: generated)")
    parser.add_argument("--stage", type=Path, help="stage directory (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uslearn-stage-bench-") as tmp:
        tmp = Path(tmp)
        source = args.source or make_dataset(tmp / "source", args.mb)
        stage = args.stage or tmp / "stage"
        nbytes = sum((source / name).stat().st_size for name in (MANIFEST, STORE))

        # The plain copy first: it pulls the source into the page cache for both, if it fits.
        plain = tmp / "plain"
        plain.mkdir()
        start = time.perf_counter()
        for name in (MANIFEST, STORE):
            shutil.copyfile(source / name, plain / name)
        plain_s = time.perf_counter() - start
        shutil.rmtree(plain)

        start = time.perf_counter()
        path, copied = stage_dataset(source, stage)
        staged_s = time.perf_counter() - start
        assert copied, f"{path} existed already: pass an empty --stage"
        start = time.perf_counter()
        _, copied_again = stage_dataset(source, stage)
        reuse_s = time.perf_counter() - start
        if args.stage:
            shutil.rmtree(path)

    mb = nbytes / 1e6
    print(f"dataset: {mb:.0f} MB ({source})")
    print(f"staging (copy + fingerprint check): {staged_s:.2f} s = {mb / staged_s:.0f} MB/s")
    print(f"plain copy of the same files:        {plain_s:.2f} s = {mb / plain_s:.0f} MB/s")
    print(f"staging / plain copy time: {staged_s / plain_s:.2f}x")
    print(f"second trial on the node (copy found): {reuse_s * 1000:.1f} ms, copied={copied_again}")


if __name__ == "__main__":
    main()
