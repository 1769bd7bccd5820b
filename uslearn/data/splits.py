"""Patient-disjoint splits and nested label fractions (docs/METHODOLOGY.md "Data protocol").

- ``assign_splits``: labelled / unlabelled / val / test **by patient**, seeded, keeping the
  splits a user gave (``split_given``). Only patients with at least one labelled image can go
  to labelled / val / test; every image of a patient goes to that patient's split, so an
  unlabelled frame of a test patient stays in ``test`` (with labels -1) rather than leaking
  into the unlabelled training pool. Use ``labelled_rows`` to get the rows that carry labels.
- ``labelled_subset``: 10 / 20 / 50 / 100 % of the labelled split drawn **by exam** and nested.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from uslearn.data.dataset import (
    CLASSES,
    MANIFEST,
    META,
    SPLITS,
    STORE,
    Dataset,
    DatasetError,
    integrity_meta,
    validate_manifest,
)
from uslearn.data.target import normalise, target_lock

GIVEN = "split_given"  # manifest column: True where the split came from the user's CSV


def _target_exams(amount: float, n_exams: int, name: str) -> tuple[int, bool]:
    """Return (number of exams ``amount`` asks for, whether it is strict).

    A fraction in [0, 1) is rounded up and best effort; a count >= 1 is strict.
    """
    if amount < 0:
        raise DatasetError(f"--{name} {amount}: expected a fraction in [0, 1) or a count >= 1")
    if amount < 1:
        return int(np.ceil(amount * n_exams - 1e-9)), False
    if amount != int(amount):
        raise DatasetError(f"--{name} {amount}: a count of exams must be a whole number")
    return int(amount), True


def assign_splits(
    manifest: pd.DataFrame,
    *,
    val: float = 0.2,
    test: float = 0.25,
    labelled: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Return a copy of ``manifest`` with ``split`` assigned by patient.

    Patients whose split was given (any row with ``split_given`` True) keep it for all their
    rows. The other patients that have labelled images are shuffled (seeded) and fill test,
    then val, then labelled, until each holds the requested number of labelled exams; the
    rest, and every patient without labels, go to unlabelled.

    Args:
        manifest: rows with ``patient_id``, ``exam_id``, ``split``, the class columns and
            optionally a boolean ``split_given`` column.
        val: fraction (< 1, rounded up, best effort) of the labelled exams, or a count of
            exams (strict), for validation. The defaults follow the paper's proportions
            (77 val and 101 test of 402 labelled exams).
        test: the same for the test split.
        labelled: the same for the labelled training split; None puts every remaining
            labelled patient there.
        seed: seed of the patient shuffle.

    Returns:
        The new manifest (same row order), with ``split_given`` kept or added as False.

    Raises:
        DatasetError: if a patient's given splits disagree, or the amounts exceed the
            labelled exams available.
    """
    out = manifest.copy()
    given = (
        out[GIVEN].fillna(False).astype(bool).to_numpy()
        if GIVEN in out
        else np.zeros(len(out), bool)
    )
    out[GIVEN] = given
    has_label = (out[list(CLASSES)].to_numpy() >= 0).all(axis=1)
    patients = out["patient_id"].to_numpy()

    given_split = out.loc[given, ["patient_id", "split"]].drop_duplicates()
    clash = given_split["patient_id"].duplicated(keep=False)
    if clash.any():
        pid = given_split.loc[clash, "patient_id"].iloc[0]
        found = sorted(given_split.loc[given_split["patient_id"] == pid, "split"])
        raise DatasetError(f"patient {pid} is given two splits {found}; a patient has one split")
    fixed = dict(zip(given_split["patient_id"], given_split["split"]))

    labelled_exams = out.loc[has_label, ["patient_id", "exam_id"]].drop_duplicates()
    n_labelled_exams = len(labelled_exams)
    free = labelled_exams[~labelled_exams["patient_id"].isin(fixed)]
    exams_per_patient = free.groupby("patient_id", sort=True).size()
    fixed_exams = (
        labelled_exams.assign(split=labelled_exams["patient_id"].map(fixed)).groupby("split").size()
    )
    order = np.random.default_rng(seed).permutation(len(exams_per_patient))
    queue = list(zip(exams_per_patient.index[order], exams_per_patient.to_numpy()[order]))

    assigned: dict[str, str] = {}
    for split, amount in (("test", test), ("val", val), ("labelled", labelled)):
        if amount is None:
            assigned.update({pid: split for pid, _ in queue})
            queue = []
            continue
        want, strict = _target_exams(amount, n_labelled_exams, split)
        have = int(fixed_exams.get(split, 0))
        while have < want and queue:
            pid, n = queue.pop(0)
            assigned[pid] = split
            have += n
        if have < want and strict:
            raise DatasetError(
                f"--{split} asks for {want} labelled exams but only {have} are available "
                f"({n_labelled_exams} labelled exams in all)"
            )
    split_of = {**assigned, **fixed}
    new = pd.Series(patients).map(split_of).fillna("unlabelled").to_numpy()
    out["split"] = np.where(given, out["split"].to_numpy(), new)
    return out


def labelled_rows(dataset: Dataset, split: str) -> np.ndarray:
    """Return the rows of ``split`` that carry labels (no -1), in manifest order."""
    rows = dataset.indices(split)
    return rows[(dataset.labels[rows] >= 0).all(axis=1)]


def labelled_from_ids(dataset: Dataset, path: str | os.PathLike) -> np.ndarray:
    """Return the sorted labelled-split rows whose ``image_id`` is listed in file ``path``.

    The file holds one image id a line (blank lines ignored): the images an active-learning
    round revealed. Every id must be a labelled image of the labelled split.

    Raises:
        DatasetError: unreadable file, an empty list, or an id (named with its line) that is
            not a labelled image of the labelled split.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the list of labelled image ids ({err})") from None
    rows = labelled_rows(dataset, "labelled")
    position = dict(zip(dataset.manifest["image_id"].to_numpy()[rows], rows))
    chosen = []
    for number, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id not in position:
            raise DatasetError(
                f"{path}:{number}: image id {image_id!r} is not a labelled image of the "
                f"labelled split of {dataset.root}"
            )
        chosen.append(position[image_id])
    if not chosen:
        raise DatasetError(f"{path}: no image ids listed; expected one labelled image id a line")
    return np.unique(np.asarray(chosen, dtype=np.int64))


def labelled_subset(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """Return the labelled-split rows of a label fraction, drawn by exam and nested over fractions.

    The labelled exams are shuffled once per seed; the subset is the shortest prefix of that
    order whose images reach ``fraction`` of the labelled images (at least one exam). Since
    every fraction takes a prefix of the same order, for one seed the 10 % set lies inside the
    20 % set, which lies inside the 50 % set (our choice, docs/METHODOLOGY.md: curves over fractions
    compare like with like). Rows without labels (-1) are left out.

    Args:
        dataset: an opened dataset.
        fraction: in (0, 1]; 1 returns every labelled row.
        seed: seed of the exam shuffle.

    Returns:
        Sorted int64 dataset row indices.

    Raises:
        DatasetError: if ``fraction`` is out of range or the labelled split has no labels.

    Warns:
        UserWarning naming each class with no positive example in the subset.
    """
    if not 0 < fraction <= 1:
        raise DatasetError(f"label fraction {fraction} is not in (0, 1]")
    rows = labelled_rows(dataset, "labelled")
    if len(rows) == 0:
        raise DatasetError(f"{dataset.root}: the labelled split has no labelled images")
    exams = dataset.manifest["exam_id"].to_numpy()[rows]
    # Sorting the unique exam ids first makes the draw independent of manifest row order.
    unique, inverse = np.unique(exams, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = np.bincount(inverse, minlength=len(unique))[order]
    n_take = int(np.searchsorted(np.cumsum(sizes), fraction * len(rows) - 1e-9) + 1)
    chosen = np.zeros(len(unique), bool)
    chosen[order[: min(n_take, len(unique))]] = True
    subset = np.sort(rows[chosen[inverse]])
    positives = (dataset.labels[subset] == 1).sum(axis=0)
    missing = [c for c, n in zip(CLASSES, positives) if n == 0]
    if missing:
        warnings.warn(
            f"label fraction {fraction} (seed {seed}) leaves no positive example of "
            f"{', '.join(missing)} ({len(subset)} images)",
            UserWarning,
            stacklevel=2,
        )
    return subset


def split_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return images, exams and patients per split (rows in SPLITS order)."""
    grouped = manifest.groupby("split")
    table = pd.DataFrame(
        {
            "images": grouped.size(),
            "exams": grouped["exam_id"].nunique(),
            "patients": grouped["patient_id"].nunique(),
        }
    )
    return table.reindex(list(SPLITS)).fillna(0).astype(int)


def write_splits(dataset: Dataset, manifest: pd.DataFrame) -> Dataset:
    """Replace the manifest of ``dataset`` by ``manifest`` (same rows, new splits); return it reopened.

    The store is not rewritten. The new manifest and meta.json (new fingerprint) are written to
    temporary files and renamed over the old ones, manifest first: an interruption between
    the two renames leaves a dataset that opens but fails ``Dataset.verify``. The dataset's
    write lock is held meanwhile, so an import or another split cannot interleave.
    """

    if not manifest["image_id"].reset_index(drop=True).equals(dataset.manifest["image_id"]):
        raise DatasetError(f"{dataset.root}: new manifest rows differ from the stored ones")
    validate_manifest(manifest, where=f"{dataset.root / MANIFEST}")
    root = dataset.root
    tmp_manifest = root / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp_meta = root / f".{META}.tmp-{os.getpid()}"
    with target_lock(normalise(root)):
        try:
            manifest.reset_index(drop=True).to_parquet(tmp_manifest, index=False)
            meta = {**dataset.meta, **integrity_meta(tmp_manifest, root / STORE)}
            tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.replace(tmp_manifest, root / MANIFEST)
            os.replace(tmp_meta, root / META)
        finally:
            for path in (tmp_manifest, tmp_meta):
                path.unlink(missing_ok=True)
    return Dataset.open(root)
