"""t-SNE of a clustering model's backbone features on test images (Fig. 2 right), coloured by
the cluster each image is assigned to and by its true label combination.

torch is imported only inside ``extract_features``, so the rest of ``analysis`` stays light.
Every clustering method's network has a ``cluster`` head, so any of them can be drawn.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from uslearn.data.dataset import CLASSES  # noqa: E402
from uslearn.errors import UserError  # noqa: E402
from uslearn.log import get_logger  # noqa: E402

log = get_logger(__name__)

CLUSTER_HEAD = "cluster"
RARE = "rarer combinations"


def extract_features(
    checkpoint: str | Path,
    dataset: str | Path,
    split: str = "test",
    image_size: int | None = None,
    max_images: int | None = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return backbone features, assigned clusters and labels of a dataset split.

    The network, its input and its outputs are the training code's own: the checkpoint is
    read by ``uslearn.models.load_network`` and the images go through
    ``uslearn.strategies.evaluation.predict`` (as in validation, without augmentation).

    Args:
        checkpoint: a ``.pt`` file (or a directory with ``best.pt``/``checkpoint.pt``) as the
            training loop writes it, whose network has a ``cluster`` head.
        dataset: a dataset directory (``Dataset.open``).
        split: which split's images to embed.
        image_size: the side the network sees; None takes the size it was trained at from the
            checkpoint's ``config`` (else keeps the dataset's size).
        max_images: a random subset of at most this many images (t-SNE is O(N log N) but slow
            beyond a few thousand points); None keeps all.
        seed: seed of that subset.

    Returns:
        ``(features (N, 512) float32, clusters (N,) int, labels (N, C) int8)``.

    Raises:
        UserError: unreadable checkpoint, no ``cluster`` head, or an empty split.
    """
    import torch

    from uslearn.data.dataset import Dataset
    from uslearn.models import load_network
    from uslearn.strategies.evaluation import predict

    network, config = load_network(checkpoint, head=CLUSTER_HEAD)
    data = Dataset.open(dataset)
    rows = data.indices(split)
    if len(rows) == 0:
        raise UserError(f"{dataset}: split '{split}' has no images")
    if max_images is not None and len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    size = image_size or config.get("image_size") or data.size
    out = predict(network, data, rows, int(size), torch.device("cpu"), features=True)
    return out["features"], out[CLUSTER_HEAD].argmax(1), data.labels[rows]


def embed(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """Return the (N, 2) t-SNE embedding of ``features`` (PCA-initialised, seeded).

    The perplexity is lowered to (N − 1) / 3 for small N, where scikit-learn would refuse it.

    Raises:
        UserError: fewer than 4 points.
    """
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        raise UserError(f"t-SNE needs at least 4 images, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(features, dtype=np.float32))


def combination_names(labels: np.ndarray) -> np.ndarray:
    """Return each multi-hot row's label combination as text (``liver + kidney``).

    Rows with no positive class read ``none``; unlabelled rows (-1) read ``unlabelled``.
    """
    names = []
    for row in np.asarray(labels):
        if (row < 0).any():
            names.append("unlabelled")
        else:
            names.append(" + ".join(c for c, v in zip(CLASSES, row) if v > 0) or "none")
    return np.array(names, dtype=object)


def tsne_figure(
    embedding: np.ndarray, clusters: np.ndarray, labels: np.ndarray, max_legend: int = 10
) -> plt.Figure:
    """Return the two-panel t-SNE figure: left by assigned cluster, right by true combination.

    The ``max_legend`` most frequent combinations get their own colour and legend entry; the
    rest are drawn in grey as ``rarer combinations`` so the legend stays readable.
    """
    combos = combination_names(labels)
    names, counts = np.unique(combos, return_counts=True)
    top = list(names[np.argsort(-counts, kind="stable")][:max_legend])
    shown = np.where(np.isin(combos, top), combos, RARE)
    # Rare combinations first, in light grey, so the named ones are drawn over them.
    order = ([RARE] if (shown == RARE).any() else []) + top
    tab10 = sns.color_palette("tab10", 10)
    # tab10 without its grey (kept for the rare ones), plus black: ten distinct colours.
    colours = [c for i, c in enumerate(tab10) if i != 7] + [(0.0, 0.0, 0.0)]
    if len(top) > len(colours):
        colours = sns.color_palette("husl", len(top))
    palette = dict(zip(top, colours))
    palette[RARE] = (0.8, 0.8, 0.8)

    ids = np.unique(clusters)
    cluster_palette = dict(zip(ids, sns.color_palette("husl", len(ids))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.8))
    for cluster in ids:
        mask = clusters == cluster
        left.scatter(*embedding[mask].T, s=9, color=cluster_palette[cluster], label=f"{cluster}")
    left.set_title(f"Coloured by assigned cluster (K used = {len(ids)})")
    if len(ids) <= 20:
        left.legend(
            title="cluster",
            fontsize="x-small",
            markerscale=2,
            ncols=2,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
        )
    for name in order:
        mask = shown == name
        right.scatter(*embedding[mask].T, s=9, color=palette[name], label=f"{name} ({mask.sum()})")
    right.set_title("Coloured by true label combination")
    right.legend(
        fontsize="x-small",
        markerscale=2,
        frameon=False,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
    )
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    fig.suptitle(f"t-SNE of backbone features, {len(embedding)} test images")
    fig.tight_layout()
    return fig
