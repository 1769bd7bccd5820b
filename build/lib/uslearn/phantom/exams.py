"""Patients, vendors, exams and their views, and the patient-disjoint split of the phantom.

A patient has a body habitus (subcutaneous fat: more attenuation, more haze, poorer images)
and organ traits (fatty liver, kidney length, no gallbladder after cholecystectomy). An exam
is done on one vendor's scanner with its settings (frequency, sector, gain, dynamic range,
grey map, overlay layout) and is a sequence of standard views in protocol order. Exam types
follow the paper's report titles (abdominal, renal, liver, bladder/urinary tract); the
abdominal exam's view mix is solved so that the whole database matches the label
frequencies of the paper's test set (Sec. 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uslearn.phantom.overlay import Layout
from uslearn.phantom.views import VIEW_DEPTH

# Per-image scanner, patient and frame settings (one float each, in this order).
PARAMS: tuple[str, ...] = (
    "radius",  # convex probe radius (cm)
    "depth",  # imaging depth (cm)
    "half_angle",  # half the sector angle (radians)
    "freq",  # centre frequency (MHz): attenuation and beam width
    "focus",  # focal depth (cm)
    "gain",  # level shown white (dB re liver speckle)
    "dyn_range",  # displayed dynamic range (dB)
    "gamma",  # grey map exponent (vendor "tint")
    "tgc_err",  # TGC slope error (dB/cm/MHz) vs the tissue's true attenuation
    "tgc_mid",  # TGC slider offsets at mid and full depth (dB)
    "tgc_deep",
    "noise_db",  # electronic noise level (dB re liver speckle at 0 dB net gain)
    "skin",  # body wall layers (cm): skin, subcutaneous fat, muscle
    "fat",
    "muscle",
    "fat_echo",  # echo offset of the subcutaneous fat (dB)
    "haze",  # near-field reverberation amplitude
    "fan_w",  # fraction of the frame width and height the sector spans
    "fan_h",
    "top",  # top margin (fraction of the frame height)
    "xc",  # horizontal position of the sector's axis (fraction of the width)
    "smooth",  # speckle reduction (0 = off, 1 = 3x3 mean)
    "contrast",  # tissue contrast (1 = nominal; < 1 a poor, washed-out frame)
    "mirror",  # +1, or -1 for a left-right mirrored display (probe orientation)
)
P = {name: i for i, name in enumerate(PARAMS)}

# Images per exam in the paper: 89 830 / 6 951.
MEAN_IMAGES_PER_EXAM = 89_830 / 6_951
PATIENTS_PER_EXAM = 5_788 / 6_951
# Share of each view among all images, tuned by hand so that the labels measured on the
# rendered frames match the paper's test-set shares (tests/test_phantom.py checks them).
TARGET_VIEWS: dict[str, float] = {
    "other": 0.247,
    "liver": 0.248,
    "liver_gallbladder": 0.083,
    "liver_kidney": 0.07,
    "liver_pancreas": 0.037,
    "liver_gallbladder_pancreas": 0.015,
    "pancreas": 0.011,
    "kidney": 0.134,
    "spleen": 0.059,
    "spleen_kidney": 0.05,
    "bladder": 0.047,
}
# Protocol order of a sonographer's sweep; `other` frames fall anywhere in it.
PROTOCOL: tuple[str, ...] = (
    "liver",
    "liver_gallbladder",
    "liver_gallbladder_pancreas",
    "liver_pancreas",
    "pancreas",
    "liver_kidney",
    "kidney",
    "spleen",
    "spleen_kidney",
    "bladder",
)


@dataclass(frozen=True)
class ExamType:
    """A report title: its share of exams, mean length and view mix (None = solved)."""

    share: float
    mean_images: float
    views: dict[str, float] | None


_SHORT_TYPES = {
    "renal": ExamType(
        0.12,
        9.0,
        {
            "kidney": 0.45,
            "liver_kidney": 0.15,
            "spleen_kidney": 0.12,
            "bladder": 0.13,
            "other": 0.15,
        },
    ),
    "liver": ExamType(
        0.10,
        10.0,
        {
            "liver": 0.45,
            "liver_gallbladder": 0.2,
            "liver_kidney": 0.1,
            "liver_pancreas": 0.05,
            "other": 0.2,
        },
    ),
    "bladder": ExamType(0.06, 6.0, {"bladder": 0.55, "kidney": 0.15, "other": 0.3}),
}


def _solve_abdominal() -> ExamType:
    """Return the abdominal exam type whose views make the database match TARGET_VIEWS."""
    share = 1.0 - sum(t.share for t in _SHORT_TYPES.values())
    images_short = sum(t.share * t.mean_images for t in _SHORT_TYPES.values())
    mean = (MEAN_IMAGES_PER_EXAM - images_short) / share
    weights = {}
    for view, target in TARGET_VIEWS.items():
        short = sum(t.share * t.mean_images * t.views.get(view, 0.0) for t in _SHORT_TYPES.values())
        weights[view] = (target * MEAN_IMAGES_PER_EXAM - short) / (share * mean)
    if min(weights.values()) < 0:
        raise RuntimeError(f"exam types over-use a view: abdominal weights {weights}")
    total = sum(weights.values())
    return ExamType(share, mean, {v: w / total for v, w in weights.items()})


EXAM_TYPES: dict[str, ExamType] = {"abdominal": _solve_abdominal(), **_SHORT_TYPES}


@dataclass(frozen=True)
class Vendor:
    """A scanner make: probe, default settings and overlay style."""

    name: str
    share: float
    probe: str
    freq: float
    half_angle_deg: float
    radius: float
    dyn_range: float
    gamma: float
    frame: tuple[float, float, float, float]  # fan_w, fan_h, top, xc
    smooth: float  # speckle reduction strength
    layout: Layout


VENDORS: tuple[Vendor, ...] = (
    Vendor("vendor_a", 0.32, "C5-1", 3.5, 36, 5.0, 60, 1.0, (0.80, 0.88, 0.06, 0.50), 0.5,
           Layout(False, False, 0.85, True, True)),
    Vendor("vendor_b", 0.25, "C1-6", 4.0, 34, 4.2, 66, 1.15, (0.72, 0.86, 0.08, 0.56), 0.3,
           Layout(False, False, 0.95, False, True)),
    Vendor("vendor_c", 0.20, "C60X", 3.2, 38, 6.0, 55, 0.9, (0.86, 0.92, 0.04, 0.50), 0.7,
           Layout(True, True, 0.75, True, False)),
    Vendor("vendor_d", 0.13, "4C1", 3.0, 33, 4.0, 62, 1.25, (0.76, 0.84, 0.10, 0.46), 0.1,
           Layout(True, False, 1.0, False, False)),
    Vendor("vendor_e", 0.10, "C5-2", 4.5, 30, 3.5, 58, 1.05, (0.70, 0.90, 0.05, 0.52), 0.4,
           Layout(False, True, 0.8, True, True)),
)  # fmt: skip


@dataclass(frozen=True)
class Patient:
    """Traits shared by every exam of one (synthetic) patient."""

    index: int
    habitus: float  # 0 = slim, 1 = obese
    fatty_liver: bool
    liver_echo: float
    kidney_length: float
    no_gallbladder: bool


@dataclass(frozen=True)
class Exam:
    """One exam: whose, which type, which scanner, which views in which order."""

    index: int
    seed: int
    patient: Patient
    exam_type: str
    vendor: int
    views: tuple[str, ...]
    bladder_fill: float


def make_patient(seed: int, index: int) -> Patient:
    """Return patient ``index`` of the database with ``seed`` (its own random stream)."""
    rng = np.random.default_rng([seed, 2, index])
    habitus = float(rng.beta(2.0, 3.0))
    return Patient(
        index=index,
        habitus=habitus,
        fatty_liver=bool(rng.random() < 0.08 + 0.25 * habitus),
        liver_echo=float(rng.normal(0.0, 1.2)),
        kidney_length=float(np.clip(rng.normal(11.0, 0.8), 8.5, 13.0)),
        no_gallbladder=bool(rng.random() < 0.03),
    )


def _exam_views(rng: np.random.Generator, exam_type: ExamType, patient: Patient) -> list[str]:
    names = list(exam_type.views)
    weights = np.array([exam_type.views[v] for v in names])
    extra = exam_type.mean_images - 1.0
    n = 1 + int(rng.negative_binomial(4, 4.0 / (4.0 + extra)))
    views = [names[i] for i in rng.choice(len(names), size=n, p=weights / weights.sum())]
    if patient.no_gallbladder:
        views = [v.replace("_gallbladder", "") for v in views]
    # Protocol order; `other` frames get a random place in the sweep.
    keys = [
        PROTOCOL.index(v) + rng.uniform(0, 0.5) if v in PROTOCOL else rng.uniform(0, len(PROTOCOL))
        for v in views
    ]
    return [views[i] for i in np.argsort(keys, kind="stable")]


def plan_exams(seed: int, n_exams: int) -> list[Exam]:
    """Return the exams of a database: patients, types, vendors and view sequences.

    Every patient has at least one exam; the extra exams go to patients drawn with a
    gamma-distributed propensity, so a few patients have many exams, as in a PACS.
    """
    rng = np.random.default_rng([seed, 0])
    n_patients = max(1, round(n_exams * PATIENTS_PER_EXAM))
    propensity = rng.gamma(0.5, size=n_patients)
    extra = rng.choice(n_patients, size=n_exams - n_patients, p=propensity / propensity.sum())
    owners = np.sort(np.concatenate([np.arange(n_patients), extra]))
    type_names = list(EXAM_TYPES)
    type_p = np.array([EXAM_TYPES[t].share for t in type_names])
    vendor_p = np.array([v.share for v in VENDORS])
    exams, patients, last_vendor = [], {}, {}
    for index, owner in enumerate(owners):
        owner = int(owner)
        if owner not in patients:
            patients[owner] = make_patient(seed, owner)
        exam_rng = np.random.default_rng([seed, 1, index])
        kind = type_names[int(exam_rng.choice(len(type_names), p=type_p))]
        vendor = int(exam_rng.choice(len(VENDORS), p=vendor_p))
        if owner in last_vendor and exam_rng.random() < 0.7:
            vendor = last_vendor[owner]  # most patients come back to the same hospital
        last_vendor[owner] = vendor
        views = _exam_views(exam_rng, EXAM_TYPES[kind], patients[owner])
        fill = float(exam_rng.uniform(0.35, 1.15))
        exams.append(Exam(index, seed, patients[owner], kind, vendor, tuple(views), fill))
    return exams


def assign_splits(exams: list[Exam], counts: dict[str, int], seed: int) -> list[str]:
    """Return each exam's split; patients never straddle two splits.

    Args:
        exams: the database's exams.
        counts: target exam counts for "test", "val" and "labelled"; the rest is unlabelled.
        seed: seed of the patient shuffle.

    Patients are visited in random order, those with fewer exams first, and taken whole into
    the first split that still needs at least as many exams as they have, so the small splits
    get their exact counts from one-exam patients (the paper: 224 exams from 222 patients).
    """
    by_patient: dict[int, list[int]] = {}
    for exam in exams:
        by_patient.setdefault(exam.patient.index, []).append(exam.index)
    shuffled = np.random.default_rng([seed, 4]).permutation(sorted(by_patient))
    # Patients with fewer exams first (stable sort keeps the shuffle among equals): the small
    # splits then hold about one exam per patient, like the paper's 224 exams / 222 patients.
    order = sorted(shuffled, key=lambda patient: len(by_patient[int(patient)]))
    need = {name: counts.get(name, 0) for name in ("test", "val", "labelled")}
    split = ["unlabelled"] * len(exams)
    for patient in order:
        own = by_patient[int(patient)]
        for name in ("test", "val", "labelled"):
            if 0 < len(own) <= need[name]:
                need[name] -= len(own)
                for index in own:
                    split[index] = name
                break
    return split


def exam_settings(exam: Exam) -> dict[str, float]:
    """Return the settings shared by all frames of an exam (from a stream seeded by the exam)."""
    vendor = VENDORS[exam.vendor]
    habitus = exam.patient.habitus
    rng = np.random.default_rng([exam.seed, 7, exam.index])
    return {
        "freq": vendor.freq + rng.uniform(-0.3, 0.3) - 0.5 * habitus,
        "gain": 30.0 + rng.normal(0, 3.5),
        "dyn_range": vendor.dyn_range + rng.uniform(-4, 4),
        "fat": 0.6 + 3.5 * habitus + rng.uniform(-0.2, 0.2),
        "half_angle": float(np.deg2rad(vendor.half_angle_deg + rng.uniform(-3, 3))),
        "gamma": vendor.gamma * rng.uniform(0.9, 1.1),
        "muscle": rng.uniform(0.6, 1.4),
        "fat_echo": rng.uniform(-2, 3),
        "frame_rate": int(rng.integers(12, 35)),
        "mi": int(rng.integers(0, 4)),
        # Zoom and pan of the display, and the probe-orientation convention of the exam.
        "zoom": rng.uniform(0.85, 1.1),
        "pan": rng.uniform(-0.04, 0.04),
        "mirror": -1.0 if rng.random() < 0.25 else 1.0,
    }


def image_settings(
    rng: np.random.Generator,
    exam: Exam,
    view: str,
    difficulty: float,
    base: dict[str, float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Return the (len(PARAMS),) settings of one frame and its overlay text lines.

    Args:
        rng: the exam's scene stream (frame-level jitter).
        exam: the exam the frame belongs to.
        view: the view's name (sets the typical depth).
        difficulty: 1 = default; more adds electronic noise and haze.
        base: ``exam_settings(exam)``, computed once per exam by callers that loop.
    """
    base = exam_settings(exam) if base is None else base
    vendor = VENDORS[exam.vendor]
    habitus = exam.patient.habitus
    freq, gain_exam, dyn_range, fat = base["freq"], base["gain"], base["dyn_range"], base["fat"]
    p = np.zeros(len(PARAMS), dtype=np.float32)
    p[P["radius"]] = vendor.radius
    p[P["depth"]] = min(max(VIEW_DEPTH[view] + 4.0 * habitus + rng.normal(0, 1.0), 8.0), 24.0)
    p[P["half_angle"]] = base["half_angle"]
    p[P["freq"]] = freq
    p[P["focus"]] = p[P["depth"]] * rng.uniform(0.35, 0.7)
    # The operator compensates about half the fat layer's extra loss with gain.
    extra_loss = 2 * freq * 0.4 * fat
    p[P["gain"]] = gain_exam - 0.5 * extra_loss + rng.normal(0, 3.0)
    p[P["dyn_range"]] = dyn_range
    p[P["gamma"]] = base["gamma"]
    p[P["tgc_err"]] = rng.normal(0, 0.03)
    p[P["tgc_mid"]] = rng.normal(0, 2.0)
    p[P["tgc_deep"]] = rng.normal(0, 3.0)
    p[P["noise_db"]] = -38.0 + 6.0 * habitus + 3.0 * (difficulty - 1.0) + rng.normal(0, 2.0)
    p[P["skin"]] = 0.15
    p[P["fat"]] = fat
    p[P["muscle"]] = base["muscle"]
    p[P["fat_echo"]] = base["fat_echo"]
    p[P["haze"]] = (0.05 + 0.35 * habitus) * max(difficulty, 0.2) * rng.uniform(0.5, 1.5)
    fan_w, fan_h, top, xc = vendor.frame
    p[P["fan_w"]] = fan_w * base["zoom"]
    p[P["fan_h"]] = min(fan_h * base["zoom"], 0.97 - top)
    p[P["top"]], p[P["xc"]] = top, xc + base["pan"]
    p[P["mirror"]] = -base["mirror"] if rng.random() < 0.1 else base["mirror"]
    p[P["smooth"]] = vendor.smooth
    # Some frames are washed out (poor window, wrong preset): echo contrast shrinks.
    poor = rng.random() < min(0.5, 0.12 * difficulty)
    p[P["contrast"]] = rng.uniform(0.45, 0.8) if poor else 1.0
    lines = [
        f"{vendor.probe} ABD",
        f"{freq:.1f}MHZ D{p[P['depth']]:.0f}CM",
        f"G{50 + round(gain_exam - 30)} DR{dyn_range:.0f}",
        f"FR{base['frame_rate']} MI1.{base['mi']}",
    ]
    return p, lines
