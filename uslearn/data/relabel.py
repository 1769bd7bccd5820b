"""A new version of a dataset with the labels of a Label Studio export (``import-labelstudio``).

The source dataset is never written: the new one is another directory written by
``DatasetWriter`` (atomic, the target rules), its image store a hard link to the source's
(or a copy across file systems), and its side files (import report, phantom truth) likewise.
Its manifest is the source's with:

- the annotated images' class columns replaced by their exported label sets;
- ``label_source``: ``proposal_accepted``, ``corrected`` or ``new`` for the images this
  export labelled, and for every other row what the source said (``source`` when the source
  had no such column: the label, or its absence, came with the source dataset);
- ``annotation_id`` (Label Studio's annotation id, -1 for none) and ``annotator``
  (``ls-user-<id>``, "" for none), likewise carried over from earlier rounds;
- splits kept patient-disjoint: a patient of the ``unlabelled`` split with a newly labelled
  image moves to ``labelled`` with all its images (those still without labels stay -1 and,
  as the training code does for every labelled-split row without labels, join the unlabelled
  pool). Annotated images of the labelled, val and test splits stay in their split.

meta.json records the provenance under ``labelstudio`` (the export's sha256, counts per
label source, what was skipped, the conflict rule, the patients moved) and ``parent`` (the
source's fingerprint, source and creation time); ``uslearn train`` then sees a new
fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.data.dataset import CLASSES, MANIFEST, META, STORE, Dataset, DatasetError
from uslearn.data.labelstudio import Export, read_export
from uslearn.data.writer import DatasetWriter

SOURCE = "source"  # label_source of a row the export did not label
NEW_SPLIT = "labelled"  # where a patient of the unlabelled pool goes once labelled
COLUMNS = ("label_source", "annotation_id", "annotator")


def relabelled_manifest(data: Dataset, export: Export) -> tuple[pd.DataFrame, dict]:
    """Return the new manifest and what moved (module docstring).

    Raises:
        DatasetError: naming the task of the first exported image that is not in ``data``.
    """
    manifest = data.manifest.copy()
    row_of = pd.Series(np.arange(len(manifest)), index=manifest["image_id"].to_numpy())
    missing = [label for image_id, label in export.images.items() if image_id not in row_of.index]
    if missing:
        first = missing[0]
        raise DatasetError(
            f"{export.path}: task {first.task}: image {first.image_id} is not in {data.root} "
            f"({len(missing)} exported image(s) are not; was the export made from another "
            "dataset's curate?)"
        )
    if "label_source" not in manifest:
        manifest["label_source"] = SOURCE
    if "annotation_id" not in manifest:
        manifest["annotation_id"] = -1
    if "annotator" not in manifest:
        manifest["annotator"] = ""
    labels = np.array(manifest[list(CLASSES)].to_numpy(dtype=np.int8))  # a writable copy
    was_labelled = (labels >= 0).all(axis=1)
    rows = row_of.loc[list(export.images)].to_numpy()
    found = list(export.images.values())
    labels[rows] = np.stack([label.labels for label in found])
    columns = {
        "label_source": ([label.source for label in found], object),
        "annotation_id": ([label.annotation for label in found], np.int64),
        "annotator": ([label.annotator for label in found], object),
    }
    for column, (values, dtype) in columns.items():
        merged = np.array(manifest[column].to_numpy(), dtype=dtype)
        merged[rows] = values
        manifest[column] = merged
    for i, cls in enumerate(CLASSES):
        manifest[cls] = labels[:, i]
    pool = manifest["split"].to_numpy()[rows] == "unlabelled"
    patients = pd.unique(manifest["patient_id"].to_numpy()[rows][pool])
    moving = manifest["patient_id"].isin(patients).to_numpy()
    manifest.loc[moving, "split"] = NEW_SPLIT
    moved = {
        "patients": len(patients),
        "images": int(moving.sum()),
        "relabelled": int(was_labelled[rows].sum()),  # images that had labels before
    }
    return manifest, moved


def side_files(data: Dataset) -> list[Path]:
    """Return the files of ``data`` besides manifest, store and meta (import report, truth)."""
    skip = {MANIFEST, STORE, META}
    return sorted(
        p
        for p in data.root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in skip
    )


def provenance(data: Dataset, export: Export, moved: dict) -> dict:
    """Return the meta.json entries that say where the new labels came from."""
    parent = {k: data.meta[k] for k in ("fingerprint", "source", "created") if k in data.meta}
    if "phantom" in data.meta:
        parent["phantom"] = data.meta["phantom"]
    return {
        "parent": parent,
        "labelstudio": {
            "export_sha256": export.sha256,
            "tasks": export.tasks,
            "annotated_images": len(export.images),
            "label_sources": dict(sorted(export.sources().items())),
            "skipped_tasks": len(export.skipped_tasks),
            "unannotated_tasks": len(export.unannotated_tasks),
            "cancelled_annotations": export.cancelled,
            "on_conflict": export.rule,
            "resolved_conflicts": sum(label.resolved for label in export.images.values()),
            "moved_to_labelled": moved,
        },
    }


def write_relabelled(data: Dataset, export: Export, out: Path, overwrite: bool = False) -> Path:
    """Write the new dataset version at ``out``; return its path (``data`` is not touched).

    Raises:
        DatasetError: for an image the dataset lacks, or a target the writer rules refuse
            (``out`` may not be, hold or lie inside the source dataset or the export).
        EnvError: disk full or permission denied (nothing is left at ``out``).
    """
    manifest, moved = relabelled_manifest(data, export)
    inputs = (data.root, export.path)
    with DatasetWriter(
        out, data.size, len(data), "labelstudio-import", overwrite, inputs
    ) as writer:
        writer.adopt(data.root / STORE)
        for path in side_files(data):
            writer.adopt(path, path.name)
        return writer.commit(manifest, extra_meta=provenance(data, export, moved))


def import_labelstudio(
    data_dir: Path, export_path: Path, out: Path, rule: str = "refuse", overwrite: bool = False
) -> list[str]:
    """Run ``uslearn data import-labelstudio``; return the summary lines to print.

    Raises:
        DatasetError: a source dataset that changed since it was written, a bad export
            (``read_export``), an image the dataset lacks, or a refused target.
    """
    data = Dataset.open(data_dir)
    data.verify("sample")  # the provenance names its fingerprint: it must still hold
    export = read_export(export_path, rule)
    new = Dataset.open(write_relabelled(data, export, out, overwrite))
    sources = ", ".join(f"{k} {n}" for k, n in sorted(export.sources().items())) or "none"
    moved = new.meta["labelstudio"]["moved_to_labelled"]
    lines = [
        f"{new.root}: {len(export.images)} images labelled from {export.tasks} tasks ({sources}); "
        f"{moved['patients']} patient(s) with {moved['images']} images moved from unlabelled to "
        f"labelled; fingerprint {new.fingerprint}"
    ]
    for what, tasks in (
        ("skipped", export.skipped_tasks),
        ("without annotation", export.unannotated_tasks),
    ):
        if tasks:
            shown = ", ".join(map(str, tasks[:10])) + (" ..." if len(tasks) > 10 else "")
            lines.append(f"{len(tasks)} task(s) {what}, their images left as they were: {shown}")
    if not (new.manifest["split"] == "unlabelled").any():
        lines.append(
            "note: every patient of the unlabelled split now has a labelled image, so the split "
            "is empty: 'uslearn data check' reports it, and FixMatch and the clustering "
            "strategies then draw only on the unlabelled images of labelled patients"
        )
    return [*lines, f"next: uslearn data check {new.root}"]
