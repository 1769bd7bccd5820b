"""``uslearn data gallery``: a labelled grid of sample images per class, for a person to look at.

One row per class (positive examples) plus one row of unlabelled images; each tile is
captioned with its split and its full label set, so a wrong mapping of the hospital's tags
(kidney images under "spleen", Doppler frames that slipped through, burned-in text that was not
cropped) is visible at a glance. Samples are spread over the splits and drawn with a fixed
seed, so the same dataset gives the same picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uslearn import files
from uslearn.data.check import combination_names
from uslearn.data.dataset import CLASSES, SPLITS, Dataset, DatasetError
from uslearn.data.target import FIGURE, PNG_SOFTWARE, check_output


def pick_samples(
    dataset: Dataset, per_class: int, split: str | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Return, per class name (and "unlabelled"), up to ``per_class`` row indices to show.

    Rows are taken round-robin over the splits (only ``split`` when given), at random within
    each split.
    """
    if per_class < 1:
        raise DatasetError(f"--per-class {per_class}: expected at least 1")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng(seed)
    splits = dataset.manifest["split"].to_numpy()
    labels = dataset.labels
    wanted = SPLITS if split is None else (split,)
    masks = {c: labels[:, i] == 1 for i, c in enumerate(CLASSES)}
    masks["unlabelled"] = (labels < 0).all(axis=1)
    picked = {}
    for name, mask in masks.items():
        pools = [rng.permutation(np.flatnonzero(mask & (splits == s))).tolist() for s in wanted]
        rows: list[int] = []
        while len(rows) < per_class and any(pools):
            for pool in pools:
                if pool and len(rows) < per_class:
                    rows.append(pool.pop())
        picked[name] = np.array(rows, dtype=np.int64)
    return picked


def write_gallery(
    dataset: Dataset,
    out: str | Path,
    per_class: int = 6,
    split: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG grid of up to ``per_class`` images per class (and unlabelled); return its path.

    Args:
        dataset: an opened dataset.
        out: the PNG file to write (parent folders are created).
        per_class: tiles per row.
        split: show only this split; None spreads the samples over all splits.
        overwrite: replace an earlier gallery (or another PNG figure uslearn wrote) at ``out``.

    Raises:
        DatasetError: ``out`` is inside the dataset, or exists and may not be replaced.
    """
    out = Path(out)
    check_output(out, overwrite, FIGURE, [dataset.root])
    # Figure + Agg canvas directly: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picked = pick_samples(dataset, per_class, split)
    names = list(picked)
    fig = Figure(figsize=(1.6 * per_class + 1.2, 1.75 * len(names)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), per_class, squeeze=False)
    splits = dataset.manifest["split"].to_numpy()
    for r, name in enumerate(names):
        rows = picked[name]
        combos = combination_names(dataset.labels[rows]) if len(rows) else []
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n({int(len(rows))} shown)", fontsize=9)
            if c >= len(rows):
                ax.text(0.5, 0.5, "none" if c == 0 else "", ha="center", va="center", fontsize=8)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            row = int(rows[c])
            ax.imshow(dataset.images[row], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            caption = splits[row] if name == "unlabelled" else f"{splits[row]}: {combos[c]}"
            ax.set_title(caption, fontsize=7)
    title = f"{dataset.root.name}: {len(dataset)} images, {dataset.size} px"
    fig.suptitle(title + (f", split {split}" if split else ""), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(out, "the gallery") as handle:
        fig.savefig(handle, format="png", metadata={"Software": PNG_SOFTWARE})
    return out
