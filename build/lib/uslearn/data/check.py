"""``uslearn data check``: counts, and the leaks and gaps that would make results wrong.

Problems (the command exits non-zero): a class column missing, an empty split, a val / test /
labelled split without labels, a patient or exam in two splits, ``other`` together with an
organ, byte-identical or near-duplicate images in two splits (public ultrasound sets have
this leak: the same frame exported twice under two patients), and store files that changed
after writing (fingerprint), and almost black or flat frames when they are 10 % or more of
the dataset (a systematic decoding error, such as 12-bit data scaled as 16-bit). Notes
(printed only): unlabelled rows inside a labelled split, classes without a positive example,
constant (blank) images, and a few almost black or flat frames.

How duplicates are found: ``uslearn/data/duplicates.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from uslearn.data.dataset import CLASSES, SPLITS, Dataset, DatasetError
from uslearn.data.duplicates import cross_split_duplicates
from uslearn.data.splits import split_counts

EXAMPLES = 3
# "Almost black": under DARK_SHARE of the pixels brighter than DARK_LEVEL (of 255). A B-mode
# sector has tissue in far more of it; letterbox padding and the surround are black anyway.
DARK_LEVEL, DARK_SHARE = 16, 0.01
FLAT_STD = 2.0  # "flat": pixel standard deviation under 2 grey levels
SUSPECT_SHARE = 0.10  # from this share of frames, dark or flat frames are a problem
_CHUNK = 256


@dataclass
class CheckReport:
    """What ``check_dataset`` found.

    Attributes:
        counts: images, exams and patients per split (rows in SPLITS order).
        class_counts: positive examples per split (rows) and class (columns).
        combinations: number of labelled images per label combination ("liver+kidney").
        problems: findings that make the dataset unfit for a study (``ok`` is False).
        notes: findings worth knowing that do not fail the check.
    """

    counts: pd.DataFrame
    class_counts: pd.DataFrame
    combinations: pd.Series
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """Return the report as text for a terminal."""
        parts = [
            "images, exams and patients per split:",
            self.counts.to_string(),
            "",
            "positive examples per split and class:",
            self.class_counts.to_string(),
            "",
            "label combinations (labelled images):",
            self.combinations.to_string() if len(self.combinations) else "(none)",
            "",
        ]
        parts += [f"note: {n}" for n in self.notes]
        parts += [f"PROBLEM: {p}" for p in self.problems]
        parts.append(
            "check passed" if self.ok else f"check FAILED: {len(self.problems)} problem(s)"
        )
        return "\n".join(parts)


def combination_names(labels: np.ndarray) -> pd.Series:
    """Return the label-set name of each labelled row, classes joined by '+' in class order."""
    names = ["+".join(c for c, v in zip(CLASSES, row) if v == 1) or "(none)" for row in labels]
    return pd.Series(names, dtype=object)


def dark_and_flat(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (almost black, flat) boolean masks over the (N, H, W) uint8 images.

    Almost black: under DARK_SHARE of the pixels above DARK_LEVEL. Flat: standard deviation
    under FLAT_STD. Reads the store once, in chunks.
    """
    n = len(images)
    dark, flat = np.empty(n, bool), np.empty(n, bool)
    for start in range(0, n, _CHUNK):
        block = np.asarray(images[start : start + _CHUNK]).reshape(min(_CHUNK, n - start), -1)
        dark[start : start + len(block)] = (block > DARK_LEVEL).mean(axis=1) < DARK_SHARE
        flat[start : start + len(block)] = block.std(axis=1, dtype=np.float32) < FLAT_STD
    return dark, flat


def _dark_and_flat_findings(dataset: Dataset, problems: list[str], notes: list[str]) -> None:
    dark, flat = dark_and_flat(dataset.images)
    ids = dataset.manifest["image_id"].to_numpy()
    for mask, what in (
        (dark, f"almost black (under {DARK_SHARE:.0%} of pixels above {DARK_LEVEL}/255)"),
        (flat & ~dark, f"flat (pixel standard deviation under {FLAT_STD:g})"),
    ):
        count = int(mask.sum())
        if not count:
            continue
        shown = ", ".join(ids[np.flatnonzero(mask)[:EXAMPLES]])
        text = f"{count} of {len(mask)} image(s) are {what}, e.g. {shown}"
        if count >= SUSPECT_SHARE * len(mask):
            problems.append(
                f"{text}: too many for blank frames; check how the import read them "
                "(e.g. their bit depth, docs/DATA.md)"
            )
        else:
            notes.append(text)


def check_dataset(
    dataset: Dataset, near_duplicate: float = 0.9, verify: str = "full"
) -> CheckReport:
    """Return counts and the problems found in ``dataset`` (see the module docstring).

    Args:
        dataset: an opened dataset.
        near_duplicate: residual-thumbnail correlation from which two images in different
            splits count as near-duplicates; > 1 disables the search.
        verify: check the files against meta.json: "full" re-hashes every byte, "sample"
            16 MiB (``Dataset.verify``), "none" skips it.
    """
    manifest = dataset.manifest
    problems, notes = [], []
    missing = [c for c in (*CLASSES, "patient_id", "exam_id", "split") if c not in manifest]
    if missing:
        empty = pd.DataFrame()
        return CheckReport(empty, empty, pd.Series(dtype=int), [f"missing column(s) {missing}"])
    counts = split_counts(manifest)
    labels = dataset.labels
    labelled = (labels >= 0).all(axis=1)
    splits = manifest["split"].to_numpy()
    class_counts = (
        pd.DataFrame(labels == 1, columns=list(CLASSES))
        .groupby(splits)
        .sum()
        .reindex(list(SPLITS))
        .fillna(0)
        .astype(int)
    )
    combinations = combination_names(labels[labelled]).value_counts()

    for split in SPLITS:
        n = int(counts.loc[split, "images"])
        n_labelled = int((labelled & (splits == split)).sum())
        if n == 0:
            problems.append(f"split '{split}' is empty")
        elif split != "unlabelled" and n_labelled == 0:
            problems.append(f"split '{split}' has {n} images but none is labelled")
        elif split != "unlabelled" and n_labelled < n:
            notes.append(
                f"split '{split}': {n - n_labelled} of {n} images are unlabelled (held out "
                "with their patient); training and evaluation use only the labelled ones"
            )
        if split != "unlabelled" and n_labelled:
            absent = [c for c in CLASSES if class_counts.loc[split, c] == 0]
            if absent:
                notes.append(f"split '{split}' has no positive example of {', '.join(absent)}")
    for column, what in (("patient_id", "patient"), ("exam_id", "exam")):
        per = manifest.groupby(column)["split"].nunique()
        spread = per[per > 1]
        if len(spread):
            example = spread.index[0]
            found = sorted(manifest.loc[manifest[column] == example, "split"].unique())
            problems.append(
                f"{len(spread)} {what}(s) appear in more than one split, e.g. {example} in {found}"
            )
    other_with_organ = (labels[:, CLASSES.index("other")] == 1) & ((labels == 1).sum(axis=1) > 1)
    if other_with_organ.any():
        row = int(np.flatnonzero(other_with_organ)[0])
        problems.append(
            f"{int(other_with_organ.sum())} image(s) are labelled 'other' together with an organ, "
            f"e.g. {manifest['image_id'].iloc[row]}"
        )

    identical, near, n_constant = cross_split_duplicates(dataset.images, splits, near_duplicate)
    if n_constant:
        notes.append(f"{n_constant} constant (blank) image(s), not compared for duplicates")
    ids = manifest["image_id"].to_numpy()
    for pairs, what in (
        (identical, "byte-identical"),
        (near, f"near-duplicate (r >= {near_duplicate})"),
    ):
        if pairs:
            shown = "; ".join(
                f"{ids[a]} ({splits[a]}) ~ {ids[b]} ({splits[b]})" for a, b in pairs[:EXAMPLES]
            )
            problems.append(f"{len(pairs)} {what} image pair(s) across splits, e.g. {shown}")
    _dark_and_flat_findings(dataset, problems, notes)
    if verify != "none":
        try:
            dataset.verify(verify)
        except DatasetError as err:
            problems.append(str(err))
    return CheckReport(counts, class_counts, combinations, problems, notes)
