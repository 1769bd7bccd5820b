"""``uslearn curate``: what a clustering model found in a dataset, and which images to label next.

The paper's purpose for deep clustering: preprocess a large uncurated database and spend the
annotators' hours where they count. From one pass of the model over the images (cluster
probabilities p and 512-d backbone features f of every image) this computes:

- per cluster: its size, Algorithm 1's soft multi-label v̂_k (from the labelled images seen at
  training time) and the labels it proposes (v̂_k above the model's validation thresholds,
  ``other`` dropped when an organ passes too: it means no organ is visible);
  its most **typical** images (highest p of their cluster) and most **ambiguous** ones (smallest
  margin between their two most probable clusters);
- per image: its cluster, the proposed labels, its confidence p_max, margin p1 − p2 and its
  distance to the nearest cluster centre (1 − cosine similarity of its L2-normalised features
  to the mean normalised feature of each non-empty cluster);
- the **to-label ranking** (only images without labels, unless every image has labels):
  priority = max(uncertainty percentile, distance percentile), with uncertainty = 1 − margin,
  percentiles taken over the candidates: an image is urgent when it is among the most
  uncertain *or* the farthest from every centre. The list then takes the clusters in turn
  (largest first), each turn the cluster's highest-priority image from an exam not yet in the
  list; when a cluster has no such image left it may repeat an exam. So the first K entries
  cover K clusters and the list spreads over exams. The ranking's parts live in
  ``uslearn.acquisition.spread``, shared with the ``cluster`` acquisition function.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.acquisition.spread import nearest_centre_distance, percentile, spread_ranking
from uslearn.data.dataset import Dataset
from uslearn.data.target import Output
from uslearn.inference.package import ModelPackage
from uslearn.inference.score import Scored


@dataclass
class Curation:
    """What curate computed.

    Attributes:
        clusters: one row per cluster: ``cluster``, ``size``, ``share``, ``soft_<class>``,
            ``proposed`` (';'-joined), ``mean_confidence``, and ``agreement`` (share of its
            labelled images whose true label set equals the proposal; NaN without any).
        images: one row per image: ``image``, ``row``, ``exam_id``, ``split``, ``cluster``,
            ``confidence``, ``margin``, ``second_cluster``, ``distance``, ``proposed``.
        typical, ambiguous: per cluster, positions (into ``images``) of the images to show.
        ranking: the to-label list: ``rank``, ``image``, ``cluster``, ``exam_id``, ``priority``,
            ``uncertainty``, ``distance``, ``why``, ``proposed``, ``position``.
        classes: the class names.
    """

    clusters: pd.DataFrame
    images: pd.DataFrame
    typical: dict[int, np.ndarray]
    ambiguous: dict[int, np.ndarray]
    ranking: pd.DataFrame
    classes: tuple[str, ...]

    @property
    def n_clusters(self) -> int:
        """Return the number of clusters that hold at least one image."""
        return int((self.clusters["size"] > 0).sum())


def exclusive_other(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Return a copy of the (N, C) 0/1 ``labels`` with ``other`` off wherever an organ is on.

    ``other`` means that no organ of interest is visible (the labels' contract, docs/DATA.md):
    a cluster whose soft label passes the threshold of ``other`` and of an organ proposes the
    organ, so that accepting a proposal never gives a label set the import refuses.
    """
    labels = np.array(labels, copy=True)
    if "other" in classes:
        i = classes.index("other")
        organ = np.delete(labels, i, axis=1).any(axis=1)
        labels[organ, i] = 0
    return labels


def curate(
    package: ModelPackage, scored: Scored, data: Dataset, per_sheet: int = 12, rank: int = 200
) -> Curation:
    """Return the clusters, per-image facts, sheet picks and to-label ranking of ``scored``.

    Args:
        package: a clustering model.
        scored: its scores of dataset rows, with cluster probabilities and features.
        data: the dataset the rows belong to.
        per_sheet: typical and ambiguous images per cluster.
        rank: length of the to-label list.
    """
    classes = package.classes
    k = package.cluster_labels.shape[0]
    probs = np.asarray(scored.cluster_probs, dtype=np.float64)
    cluster = np.asarray(scored.cluster, dtype=np.int64)
    top2 = np.sort(probs, axis=1)[:, -2:] if k > 1 else np.hstack([np.zeros_like(probs), probs])
    confidence, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
    second = np.argsort(probs, axis=1)[:, -2] if k > 1 else cluster
    distance = nearest_centre_distance(np.asarray(scored.features, dtype=np.float64), cluster)
    rows = np.asarray(scored.rows, dtype=np.int64)
    manifest = data.manifest.iloc[rows]
    proposals = exclusive_other(package.labels(package.cluster_labels), classes)  # (K, C)
    names = np.array(classes, dtype=object)
    proposed_text = [";".join(names[p.astype(bool)]) for p in proposals]
    images = pd.DataFrame(
        {
            "image": scored.image,
            "row": rows,
            "exam_id": manifest["exam_id"].to_numpy(),
            "split": manifest["split"].to_numpy(),
            "cluster": cluster,
            "confidence": confidence,
            "margin": margin,
            "second_cluster": second,
            "distance": distance,
            "proposed": [proposed_text[c] for c in cluster],
        }
    )
    y = data.labels[rows]
    labelled = (y >= 0).all(axis=1)
    table = []
    for c in range(k):
        members = cluster == c
        known = members & labelled
        agreement = float((y[known] == proposals[c]).all(axis=1).mean()) if known.any() else np.nan
        table.append(
            {
                "cluster": c,
                "size": int(members.sum()),
                "share": float(members.mean()),
                **{f"soft_{n}": float(package.cluster_labels[c, i]) for i, n in enumerate(classes)},
                "proposed": proposed_text[c] or "–",
                "mean_confidence": float(confidence[members].mean()) if members.any() else np.nan,
                "labelled": int(known.sum()),
                "agreement": agreement,
            }
        )
    clusters = pd.DataFrame(table)
    typical, ambiguous = {}, {}
    for c in range(k):
        members = np.flatnonzero(cluster == c)
        if not len(members):
            continue
        typical[c] = members[np.lexsort((distance[members], -confidence[members]))][:per_sheet]
        ambiguous[c] = members[np.argsort(margin[members], kind="stable")][:per_sheet]
    candidates = np.flatnonzero(~labelled) if (~labelled).any() else np.arange(len(rows))
    uncertainty = 1.0 - margin[candidates]
    u_pct, d_pct = percentile(uncertainty), percentile(distance[candidates])
    priority = np.maximum(u_pct, d_pct)
    picked = spread_ranking(
        priority, cluster[candidates], images["exam_id"].to_numpy()[candidates], rank
    )
    chosen = candidates[picked]
    ranking = pd.DataFrame(
        {
            "rank": np.arange(1, len(chosen) + 1),
            "image": images["image"].to_numpy()[chosen],
            "cluster": cluster[chosen],
            "exam_id": images["exam_id"].to_numpy()[chosen],
            "priority": priority[picked],
            "uncertainty": uncertainty[picked],
            "distance": distance[chosen],
            "why": np.where(u_pct[picked] >= d_pct[picked], "uncertain", "far from every centre"),
            "proposed": images["proposed"].to_numpy()[chosen],
            "position": chosen,
        }
    )
    return Curation(clusters, images, typical, ambiguous, ranking, classes)


def label_studio_tasks(curation: Curation, image_urls: dict[str, str], model: str) -> list[dict]:
    """Return Label Studio tasks with the proposed labels as pre-annotations.

    Args:
        curation: the curate result.
        image_urls: image id → the URL Label Studio loads it from (tasks only for these).
        model: the model version recorded with each prediction.

    Returns:
        Tasks for a labelling config with ``<Image name="image">`` and a multiple-choice
        ``<Choices name="organs" toName="image">`` (``label_studio_config.xml``); each task's
        data holds ``image_id``, ``cluster`` and ``proposed`` (';'-joined, "" for none), which
        ``uslearn data import-labelstudio`` reads back.
    """
    facts = curation.images.set_index("image")
    tasks = []
    for image_id, url in image_urls.items():
        row = facts.loc[image_id]
        choices = [c for c in str(row["proposed"]).split(";") if c]
        tasks.append(
            {
                # The proposal in the task's data too: Label Studio exports data whole but
                # predictions as ids, and the import tells accepted from corrected labels by it.
                "data": {
                    "image": url,
                    "image_id": image_id,
                    "cluster": int(row["cluster"]),
                    "proposed": ";".join(choices),
                },
                "predictions": [
                    {
                        "model_version": model,
                        "score": float(row["confidence"]),
                        "result": [
                            {
                                "from_name": "organs",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": choices},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def label_studio_config(classes: tuple[str, ...]) -> str:
    """Return the Label Studio labelling interface matching ``label_studio_tasks``."""
    choices = "".join(f'\n    <Choice value="{c}"/>' for c in classes)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <Choices name="organs" toName="image" choice="multiple">{choices}\n  </Choices>\n'
        "</View>\n"
    )


def _curate_folder(path: Path) -> str:
    """Return "" when ``path`` is empty or an earlier curate's output, else why not."""
    if not any(path.iterdir()) or {"index.html", "clusters.csv"} <= {
        p.name for p in path.iterdir()
    }:
        return ""
    return "is not an earlier curate output (no index.html and clusters.csv)"


CURATE = Output("an earlier curate output", True, _curate_folder)


def write_tables(curation: Curation, package: ModelPackage, data: Dataset, out: Path) -> list[Path]:
    """Write clusters.csv, proposed_labels.csv, to_label.csv, the to-label images as PNGs and
    the Label Studio files into ``out``; return the paths written."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    clusters = out / "clusters.csv"
    curation.clusters.to_csv(clusters, index=False)
    proposed = out / "proposed_labels.csv"
    columns = ["image", "proposed", "cluster", "confidence", "margin", "distance", "exam_id"]
    curation.images[columns].rename(columns={"proposed": "labels"}).to_csv(proposed, index=False)
    to_label = out / "to_label.csv"
    curation.ranking.drop(columns="position").to_csv(to_label, index=False)
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    urls = {}
    for position, image_id in zip(curation.ranking["position"], curation.ranking["image"]):
        row = int(curation.images["row"].iloc[int(position)])
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(image_id)) + ".png"
        Image.fromarray(np.asarray(data.images[row])).save(folder / name)
        urls[str(image_id)] = f"/data/local-files/?d=images/{name}"
    version = f"uslearn-{package.strategy}-{package.dataset_fingerprint}"
    tasks = out / "label_studio_tasks.json"
    tasks.write_text(json.dumps(label_studio_tasks(curation, urls, version), indent=1))
    config = out / "label_studio_config.xml"
    config.write_text(label_studio_config(package.classes))
    return [clusters, proposed, to_label, folder, tasks, config]
