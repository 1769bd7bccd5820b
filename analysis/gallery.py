"""Image galleries of a model's predictions: Fig. 7 of the paper and curate's contact sheets.

Fig. 7 (paper): test images classified by the model, framed green when the predicted label
set equals the true one and red when at least one label is wrong or missing; true labels in
white, predicted labels in yellow. Here one row per class, so every class shows both its
successes and its failures: ``per_class`` images where the class was found (exact matches of
the whole label set first, framed green; then images where the class was found but another
label was wrong, framed amber), then ``per_class`` images where that class was missed or
wrongly predicted (red; the most confident mistakes: a positive with the lowest score, a
negative with the highest).

Drawn on a bare ``Figure`` with the Agg canvas: no pyplot state, safe in threads and Ray workers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CORRECT, PARTLY, WRONG = "#2ca02c", "#ff9f1c", "#d62728"
TRUE_TEXT, PRED_TEXT = "white", "#ffd700"
BACKGROUND = "#111111"
TILE = 1.9  # inches per tile


def label_text(row: np.ndarray, classes: tuple[str, ...] | list[str], width: int = 30) -> str:
    """Return ``"liver+kidney"`` for a 0/1 row (``"–"`` when empty), wrapped at ``width``."""
    names = [c for c, v in zip(classes, row) if v == 1]
    if not names:
        return "–"
    lines, line = [], names[0]
    for name in names[1:]:
        if len(line) + 1 + len(name) > width:
            lines.append(line + "+")
            line = name
        else:
            line += "+" + name
    return "\n".join([*lines, line])


def pick_fig7(
    y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, per_class: int = 2
) -> list[tuple[list[int], list[int]]]:
    """Return, per class, (indices where it was found, indices where it was wrong) to show.

    Found: the class is present and predicted; images whose whole predicted set equals the
    true set come first, then by fewest wrong labels, each by highest score. Wrong: the class
    is missed (true 1, predicted 0; lowest score first) or wrongly predicted (true 0,
    predicted 1; highest score first), taken alternately.
    """
    n_wrong = (y_true != y_pred).sum(axis=1)
    picks = []
    for c in range(y_true.shape[1]):
        found = np.flatnonzero((y_true[:, c] == 1) & (y_pred[:, c] == 1))
        found = found[np.lexsort((-scores[found, c], n_wrong[found]))][:per_class]
        missed = np.flatnonzero((y_true[:, c] == 1) & (y_pred[:, c] == 0))
        missed = list(missed[np.argsort(scores[missed, c], kind="stable")])
        extra = np.flatnonzero((y_true[:, c] == 0) & (y_pred[:, c] == 1))
        extra = list(extra[np.argsort(-scores[extra, c], kind="stable")])
        wrong: list[int] = []
        while len(wrong) < per_class and (missed or extra):
            for pool in (missed, extra):
                if pool and len(wrong) < per_class:
                    wrong.append(int(pool.pop(0)))
        picks.append(([int(i) for i in found], wrong))
    return picks


def _tile(ax, image: np.ndarray, frame: str | None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(4)


def _row_label(ax, text: str, x: float, fontsize: float, color: str | None = None) -> None:
    """Write a row's name vertically to the left of its first tile."""
    ax.text(
        x, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center",
        fontsize=fontsize, color=color,
    )  # fmt: skip


def _blank(ax, text: str = "") -> None:
    ax.set_axis_off()
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", color="#888888", fontsize=8)


def fig7(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: np.ndarray,
    classes: tuple[str, ...] | list[str],
    per_class: int = 2,
    title: str = "",
) -> Figure:
    """Return Fig. 7: per class, correct (green) and incorrect (red) predictions.

    Args:
        images: N uint8 (S, S) images: an array, or any object with ``images[i]``.
        y_true, y_pred: (N, C) 0/1 true and predicted labels.
        scores: (N, C) the model's scores (the shown class's score is printed).
        classes: the C class names in column order.
        per_class: correct and incorrect images per class (2 + 2 per row).
        title: the figure title.
    """
    picks = pick_fig7(y_true, y_pred, scores, per_class)
    cols = 2 * per_class
    fig = Figure(figsize=(TILE * cols + 1.0, (TILE + 0.75) * len(classes) + 0.7), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor(BACKGROUND)
    axes = fig.subplots(len(classes), cols, squeeze=False)
    for c, name in enumerate(classes):
        found, wrong = picks[c]
        for j in range(cols):
            ax = axes[c, j]
            chosen, k = (found, j) if j < per_class else (wrong, j - per_class)
            if k >= len(chosen):
                _blank(ax, ("never found" if j < per_class else "no error") if k == 0 else "")
                continue
            i = chosen[k]
            exact = bool((y_true[i] == y_pred[i]).all())
            _tile(ax, images[i], WRONG if j >= per_class else CORRECT if exact else PARTLY)
            true_text = label_text(y_true[i], classes)
            pred_text = label_text(y_pred[i], classes)
            ax.set_title(
                f"{name} {scores[i, c]:.2f}", fontsize=7, color="#cccccc", pad=2, loc="left"
            )
            ax.text(
                0.0,
                -0.03,
                true_text,
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=6.5,
                color=TRUE_TEXT,
            )
            if not exact:
                ax.text(
                    0.0,
                    -0.05 - 0.11 * (true_text.count("\n") + 1),
                    pred_text,
                    transform=ax.transAxes,
                    ha="left",
                    va="top",
                    fontsize=6.5,
                    color=PRED_TEXT,
                )
        _row_label(axes[c, 0], name, x=-0.12, fontsize=10, color="white")
    title = title or (
        "Fig. 7: per class, images where it was found (green: every label right; amber: another "
        "label wrong) and where it was missed or wrongly predicted (red). True labels in white, "
        "predicted labels in yellow when they differ; the class's score above each image."
    )
    width = int(fig.get_figwidth() * 11)  # characters of 8.5 pt text across the figure
    title = textwrap.fill(title, width)
    fig.suptitle(title, color="white", fontsize=8.5)
    top = 0.98 - (0.35 + 0.16 * (title.count("\n") + 1)) / fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.99, top=top, bottom=0.03, hspace=0.7, wspace=0.08)
    return fig


def contact_sheet(
    images: list[np.ndarray],
    captions: list[str],
    columns: int,
    title: str,
    section_rows: list[tuple[str, int]],
) -> Figure:
    """Return a grid of captioned tiles in labelled blocks of rows (curate's contact sheets).

    Args:
        images: the tiles, block after block, each block padded to whole rows with None.
        captions: one caption per tile.
        columns: tiles per row.
        title: the sheet title.
        section_rows: (block label, number of rows) per block, in order.
    """
    rows = sum(n for _, n in section_rows)
    fig = Figure(figsize=(TILE * 0.85 * columns + 0.8, TILE * 0.95 * rows + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    r = 0
    for label, n_rows in section_rows:
        for rr in range(n_rows):
            for j in range(columns):
                k = (r + rr) * columns + j
                ax = axes[r + rr, j]
                if k >= len(images) or images[k] is None:
                    _blank(ax)
                    continue
                _tile(ax, images[k], None)
                ax.set_title(captions[k], fontsize=6.5, pad=2)
            if rr == 0:
                _row_label(axes[r, 0], label, x=-0.1, fontsize=9)
        r += n_rows
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.05,
        right=0.99,
        top=1 - 0.55 / fig.get_figheight(),
        bottom=0.01,
        hspace=0.35,
        wspace=0.06,
    )
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created), replaced whole; return the path."""
    from uslearn import files
    from uslearn.data.target import PNG_SOFTWARE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(path, "the figure") as handle:
        fig.savefig(
            handle,
            format="png",
            dpi=dpi,
            facecolor=fig.get_facecolor(),
            metadata={"Software": PNG_SOFTWARE},
        )
    return path


def fig7_of_run(
    run_id: str, tracking_uri: str | None, dataset: str | Path, out_dir: str | Path
) -> tuple[list[Path], str]:
    """Draw Fig. 7 of run ``run_id``'s logged model on ``dataset``'s test split.

    Returns:
        ([``fig7_predictions.png``], a caption with the number of images and their weighted F1).

    Raises:
        UserError: the run has no logged model, or the dataset does not fit it.
    """
    from sklearn.metrics import f1_score

    from uslearn.data.dataset import Dataset
    from uslearn.inference.output import RowView, labelled
    from uslearn.inference.score import score_source
    from uslearn.inference.sources import from_dataset
    from uslearn.study.logged_models import open_model

    package = open_model(f"runs:/{run_id}", tracking_uri)
    data = Dataset.open(dataset)
    package.check_data(data)
    scored = score_source(package.to("auto"), from_dataset(data, "test", package.preprocess))
    found = labelled(package, scored, data)
    figure = fig7(
        RowView(data.images, found.rows), found.y_true, found.y_pred, found.scores, package.classes
    )
    path = save_png(figure, Path(out_dir) / "fig7_predictions.png")
    f1 = f1_score(found.y_true, found.y_pred, average="weighted", zero_division=0)
    caption = (
        f"{len(found)} test images of {data.root.name}; weighted F1 {100 * f1:.2f} % with the "
        "model's validation-fitted thresholds."
    )
    return [path], caption
