"""Labels of phantom frames: measured visibility -> tags, and optional annotation noise."""

from __future__ import annotations

import numpy as np

from uslearn.data import CLASSES
from uslearn.phantom.anatomy import ORGANS

# An organ is tagged when at least this fraction of the sector shows it, unshadowed
# (about 3 cm² of a 16 cm deep sector: a sliver an annotator would still recognise).
VISIBLE_MIN = 0.015
# Tags an annotator confuses (label noise): a wrong tag is drawn among these (Fig. 7 G).
CONFUSABLE = {
    "liver": ("gallbladder", "spleen", "kidney"),
    "gallbladder": ("liver", "pancreas"),
    "kidney": ("liver", "spleen"),
    "pancreas": ("liver", "gallbladder"),
    "spleen": ("liver", "kidney"),
    "bladder": ("kidney",),
    "other": ("pancreas", "kidney", "gallbladder"),
}


def labels_from_visible(visible: np.ndarray) -> np.ndarray:
    """Return (N, C) int8 labels in CLASSES order from (N, 6) visible fractions."""
    present = visible >= VISIBLE_MIN
    labels = np.zeros((len(visible), len(CLASSES)), dtype=np.int8)
    for j, organ in enumerate(ORGANS):
        labels[:, CLASSES.index(organ)] = present[:, j]
    labels[:, CLASSES.index("other")] = ~present.any(axis=1)
    return labels


def add_label_noise(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of ``labels`` where a ``rate`` share of rows lost a tag or got a wrong one.

    Half of the noisy rows miss one true tag, half get a confusable wrong tag; `other` stays
    exclusive (a row left with no tag becomes `other`; an organ tag removes `other`).
    """
    noisy = labels.copy()
    other = CLASSES.index("other")
    for i in np.flatnonzero(rng.random(len(labels)) < rate):
        present = [CLASSES[j] for j in np.flatnonzero(noisy[i] == 1)]
        if rng.random() < 0.5 and "other" not in present:
            noisy[i, CLASSES.index(str(rng.choice(present)))] = 0
        else:
            options = [c for t in present for c in CONFUSABLE[t] if c not in present]
            if not options:
                continue
            noisy[i, CLASSES.index(str(rng.choice(options)))] = 1
            noisy[i, other] = 0
        if not noisy[i].any():
            noisy[i, other] = 1
    return noisy
