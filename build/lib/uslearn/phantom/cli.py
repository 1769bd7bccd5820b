"""``uslearn data phantom``: the phantom registers its own sub-command in the ``data`` group.

The data room never imports the phantom; the top-level CLI hands this module the ``data``
group's sub-parsers (see ``uslearn/cli.py``).
"""

from __future__ import annotations

import argparse

from uslearn.config import finite_float
from uslearn.data import CLASSES, Dataset
from uslearn.phantom.generate import PRESETS, generate_phantom


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``uslearn data phantom`` to the ``data`` command group."""
    parser = data_sub.add_parser(
        "phantom",
        help="Generate the synthetic abdominal ultrasound phantom dataset.",
        description="Write synthetic B-mode exams with known multi-labels, split by patient.",
    )
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--exams", type=int, default=None, help="number of exams (preset's)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--difficulty", type=finite_float, default=1.0, help="0 easy, 1 default, 2 hard"
    )
    parser.add_argument("--label-noise", type=finite_float, default=0.0, help="share of noisy tags")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = generate_phantom(
        args.out,
        preset=args.preset,
        exams=args.exams,
        size=args.size,
        seed=args.seed,
        difficulty=args.difficulty,
        label_noise=args.label_noise,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    dataset = Dataset.open(path)
    frame = dataset.manifest
    labelled = frame[frame[list(CLASSES)].ge(0).all(axis=1)]
    shares = labelled[list(CLASSES)].sum() / labelled[list(CLASSES)].to_numpy().sum()
    print(f"{path}: {len(frame)} images, {frame['exam_id'].nunique()} exams")
    print("exams per split: " + ", ".join(
        f"{s} {n}" for s, n in frame.groupby("split")["exam_id"].nunique().items()
    ))  # fmt: skip
    print("label shares (labelled rows): " + ", ".join(f"{c} {shares[c]:.2f}" for c in CLASSES))
    return 0
