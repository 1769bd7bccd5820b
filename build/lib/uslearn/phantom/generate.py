"""Synthetic abdominal ultrasound phantom: exams of B-mode frames with known multi-labels.

``generate_phantom`` writes a dataset directory (docs/CONTRACTS.md) of synthetic exams:
patients with a body habitus, scanners with their settings and overlays, standard views in
protocol order, split by patient like the paper (labelled / unlabelled / val / test). Each
frame's labels are measured on the rendered anatomy (an organ counts when enough of it is
inside the sector and not shadowed), not copied from the view name, so a tiny organ at the
edge is a genuinely hard label. See docs/PHANTOM.md for what it looks like and measures.

Generation is deterministic: exams, scenes and speckle come from streams seeded by
(seed, exam) and (seed, chunk), chunks are fixed blocks of exams and each is rendered with
one torch thread, so the store and manifest are byte-identical whatever ``workers`` is.
"""

from __future__ import annotations

import json
import os
import types
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.data import CLASSES, Dataset, DatasetError, DatasetWriter
from uslearn.log import get_logger, progress
from uslearn.phantom.anatomy import ORGANS, pack_slots
from uslearn.phantom.exams import (
    VENDORS,
    Exam,
    P,
    assign_splits,
    exam_settings,
    image_settings,
    plan_exams,
)
from uslearn.phantom.labels import add_label_noise, labels_from_visible
from uslearn.phantom.organs import ViewContext
from uslearn.phantom.views import VIEWS

log = get_logger(__name__)

# Bump whenever the generated pixels or labels change, so ensure_phantom regenerates caches.
PHANTOM_VERSION = 4
CHUNK_EXAMS = 16  # exams per work unit: fixed, so results do not depend on the worker count
TRUTH = "phantom_truth.parquet"


@dataclass(frozen=True)
class Preset:
    """Size of a phantom database and of its small splits (exam counts)."""

    exams: int
    size: int
    labelled: int
    val: int
    test: int
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(40, 32, 10, 8, 12, "tests: ~520 frames at 32 px, about a second"),
    "demo": Preset(360, 64, 60, 30, 40, "CPU demo: ~4 600 frames at 64 px, seconds"),
    "paper": Preset(6951, 224, 224, 77, 101, "the paper's database: ~89 800 frames at 224 px"),
}


def split_counts(preset: Preset, exams: int) -> dict[str, int]:
    """Return the exam counts of the labelled, val and test splits for ``exams`` exams.

    The preset's own count keeps its numbers; other counts scale them, keeping at least
    ~20 val and ~30 test exams when the database is big enough for that.
    """
    if exams == preset.exams:
        return {"labelled": preset.labelled, "val": preset.val, "test": preset.test}
    scale = exams / preset.exams
    counts = {
        "labelled": max(1, round(preset.labelled * scale)),
        "val": max(round(preset.val * scale), min(20, exams // 6), 1),
        "test": max(round(preset.test * scale), min(30, exams // 5), 1),
    }
    if sum(counts.values()) >= exams:
        raise DatasetError(f"--exams {exams} is too few to split; use at least 8")
    return counts


def _scene(rng: np.random.Generator, exam: Exam, view: str, difficulty: float, base, traits):
    params, lines = image_settings(rng, exam, view, difficulty, base)
    wall = float(params[P["skin"]] + params[P["fat"]] + params[P["muscle"]])
    ctx = ViewContext(
        depth=float(params[P["depth"]]),
        radius=float(params[P["radius"]]),
        half_angle=float(params[P["half_angle"]]),
        wall=wall,
        patient=traits,
        difficulty=difficulty,
    )
    return pack_slots(VIEWS[view](rng, ctx)), params, (VENDORS[exam.vendor].layout, lines)


def build_scenes(exams: list[Exam], difficulty: float):
    """Return slots (N, K, F), settings (N, P) and overlays of every frame of ``exams``."""
    slots, params, overlays = [], [], []
    for exam in exams:
        rng = np.random.default_rng([exam.seed, 3, exam.index])
        base = exam_settings(exam)
        traits = types.SimpleNamespace(**vars(exam.patient), bladder_fill=exam.bladder_fill)
        for view in exam.views:
            s, p, o = _scene(rng, exam, view, difficulty, base, traits)
            slots.append(s)
            params.append(p)
            overlays.append(o)
    return np.stack(slots), np.stack(params), overlays


def render_chunk(task: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """Render one chunk of exams; return (first row, images (n, S, S) uint8, visible (n, 6))."""
    import torch

    from uslearn.phantom.bmode import internal_size, render

    chunk, start, exams, size, difficulty, seed = task
    slots, params, overlays = build_scenes(exams, difficulty)
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 5, chunk]).generate_state(1)[0])
    )
    batch = 64 if internal_size(size) <= 128 else 24
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # floating-point results must not depend on threading
    try:
        images, visible = [], []
        for lo in range(0, len(slots), batch):
            out = render(
                slots[lo : lo + batch],
                params[lo : lo + batch],
                overlays[lo : lo + batch],
                size,
                generator,
            )
            images.append(out.images)
            visible.append(out.visible)
    finally:
        torch.set_num_threads(threads)
    return start, np.concatenate(images), np.concatenate(visible)


def _workers(requested: int | None, n_images: int, n_chunks: int) -> int:
    if requested is not None:
        if requested < 1:
            raise DatasetError(f"--workers {requested}: expected 1 or more")
        return min(requested, n_chunks)
    # Worker processes pay off from a few thousand images on.
    return 1 if n_images < 2000 else max(1, min(os.cpu_count() or 1, 8, n_chunks))


def _render_all(tasks: list[tuple], workers: int, writer: DatasetWriter, n_images: int):
    """Render tasks (in processes when workers > 1) into the writer; return visible (N, 6)."""
    visible = np.zeros((n_images, len(ORGANS)), dtype=np.float32)
    bar = progress(total=n_images, desc="phantom", unit="img")

    def take(result):
        start, images, seen = result
        writer.write(start, images)
        visible[start : start + len(images)] = seen
        bar.update(len(images))

    if workers == 1:
        for task in tasks:
            take(render_chunk(task))
    else:
        # Bounded in-flight work keeps memory flat however big the database is.
        # fork (like torch's DataLoader) needs no `if __name__ == "__main__"` guard in the
        # caller's script; workers render with one torch thread, so no OpenMP pool is inherited.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=get_context(method)) as pool:
            pending: deque = deque()
            for task in tasks:
                pending.append(pool.submit(render_chunk, task))
                if len(pending) >= 2 * workers:
                    take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
    bar.close()
    return visible


def generate_phantom(
    out: str | Path,
    preset: str = "demo",
    exams: int | None = None,
    size: int | None = None,
    seed: int = 0,
    difficulty: float = 1.0,
    label_noise: float = 0.0,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic phantom dataset directory and return its path.

    Args:
        out: dataset directory to create.
        preset: one of PRESETS (tiny, demo, paper).
        exams: number of exams (default: the preset's).
        size: image side in pixels (default: the preset's).
        seed: seed of everything random; same arguments give byte-identical files.
        difficulty: 0 (easy) .. 1 (default) .. 2 (hard): edge organs, shadows, noise.
        label_noise: share of labelled/val frames with one missed or wrong tag (the test
            split stays clean, as the paper's double-annotated test set).
        workers: processes to render with (default: all cores for big databases).
        overwrite: replace an existing directory at ``out``.

    Raises:
        DatasetError: on an unknown preset, out-of-range arguments or an existing ``out``.
    """
    if preset not in PRESETS:
        raise DatasetError(f"unknown phantom preset '{preset}'; expected one of {list(PRESETS)}")
    spec = PRESETS[preset]
    exams = spec.exams if exams is None else int(exams)
    size = spec.size if size is None else int(size)
    if exams < 8:
        raise DatasetError(f"--exams {exams}: the phantom needs at least 8 exams to split")
    if seed < 0:
        raise DatasetError(f"--seed {seed}: expected 0 or more")
    if not 0.0 <= difficulty <= 3.0:
        raise DatasetError(f"--difficulty {difficulty}: expected a value in 0..3")
    if not 0.0 <= label_noise <= 1.0:
        raise DatasetError(f"--label-noise {label_noise}: expected a share in 0..1")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DatasetError(f"{out}: already exists; choose another --out or pass --overwrite")

    plan = plan_exams(seed, exams)
    splits = assign_splits(plan, split_counts(spec, exams), seed)
    counts = [len(e.views) for e in plan]
    starts = np.concatenate([[0], np.cumsum(counts)])
    n_images = int(starts[-1])
    tasks = [
        (c, int(starts[lo]), plan[lo : lo + CHUNK_EXAMS], size, difficulty, seed)
        for c, lo in enumerate(range(0, exams, CHUNK_EXAMS))
    ]
    n_workers = _workers(workers, n_images, len(tasks))
    log.info(
        "phantom %s: %d exams, %d images at %d px, %d worker(s)",
        preset,
        exams,
        n_images,
        size,
        n_workers,
    )
    with DatasetWriter(out, size, n_images, f"phantom:{preset}", overwrite) as writer:
        visible = _render_all(tasks, n_workers, writer, n_images)
        truth = labels_from_visible(visible)
        exam_of_row = np.repeat(np.arange(exams), counts)
        split = np.array(splits)[exam_of_row]
        labels = truth.copy()
        if label_noise > 0:
            noisy_rows = np.isin(split, ("labelled", "val"))
            noise_rng = np.random.default_rng([seed, 6])
            labels[noisy_rows] = add_label_noise(truth[noisy_rows], label_noise, noise_rng)
        labels[split == "unlabelled"] = -1
        exam_ids = np.array([f"E{e.index:06d}" for e in plan])[exam_of_row]
        position = np.arange(n_images) - starts[exam_of_row]
        manifest = pd.DataFrame(
            {
                "image_id": [f"{e}_{k:02d}" for e, k in zip(exam_ids, position)],
                "patient_id": np.array([f"P{e.patient.index:06d}" for e in plan])[exam_of_row],
                "exam_id": exam_ids,
                "split": split,
                **{c: labels[:, j] for j, c in enumerate(CLASSES)},
                "view": [v for e in plan for v in e.views],
                "vendor": np.array([VENDORS[e.vendor].name for e in plan])[exam_of_row],
            }
        )
        truth_frame = pd.DataFrame(
            {
                "image_id": manifest["image_id"],
                "exam_type": np.array([e.exam_type for e in plan])[exam_of_row],
                **{c: truth[:, j] for j, c in enumerate(CLASSES)},
                **{f"visible_{o}": visible[:, j] for j, o in enumerate(ORGANS)},
            }
        )
        truth_frame.to_parquet(writer.tmp / TRUTH, index=False)
        settings = {
            "preset": preset,
            "exams": exams,
            "size": size,
            "seed": seed,
            "difficulty": difficulty,
            "label_noise": label_noise,
            "version": PHANTOM_VERSION,
        }
        path = writer.commit(manifest, extra_meta={"phantom": settings})
    log.info("phantom written to %s", path)
    return path


def ensure_phantom(path: str | Path, preset: str = "demo", seed: int = 0) -> Dataset:
    """Return the phantom dataset at ``path``, generating it if missing or made differently.

    Raises:
        DatasetError: if ``path`` holds a dataset that is not a phantom (never overwritten).
    """
    if preset not in PRESETS:
        raise DatasetError(f"unknown phantom preset '{preset}'; expected one of {list(PRESETS)}")
    spec = PRESETS[preset]
    wanted = {
        "preset": preset,
        "exams": spec.exams,
        "size": spec.size,
        "seed": seed,
        "difficulty": 1.0,
        "label_noise": 0.0,
        "version": PHANTOM_VERSION,
    }
    path = Path(path)
    if path.exists():
        try:
            dataset = Dataset.open(path)
            made = dataset.meta.get("phantom")
        except DatasetError:
            dataset, made = None, _phantom_meta(path)  # damaged: replace it only if ours
        if made is None and not (path.is_dir() and not any(path.iterdir())):
            raise DatasetError(f"{path}: holds something that is not a phantom; not replacing it")
        if dataset is not None and made == wanted:
            return dataset
        log.info("%s: phantom made with %s; regenerating with %s", path, made, wanted)
    generate_phantom(path, preset=preset, seed=seed, overwrite=True)
    return Dataset.open(path)


def _phantom_meta(path: Path) -> dict | None:
    """Return the phantom block of ``path``'s meta.json, or None if it has none."""
    try:
        return json.loads((path / "meta.json").read_text()).get("phantom")
    except (OSError, ValueError, AttributeError):
        return None
