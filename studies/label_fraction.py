"""Fig. 6 — how much do unlabelled exams help as the labelled set shrinks?

Left: FixMatch One-Head (sigmoid pseudo-labels) vs Two-Head (softmax over label combinations
plus a sigmoid head, Sec. 2.3). Right: supervised fine-tuning vs semi-supervised (Two-Head),
each from ImageNet weights or from the best LSD model (deep-clustering init, Strategy 4).
Label fractions 10/20/50/100 % are drawn by exam and nested, four seeds each; the best
validation checkpoint is kept. FixMatch takes as many unlabelled exams per step as labelled
ones (μ = 1). Without ImageNet weights the ImageNet arms run from random
weights instead; without a deep-clustering checkpoint the DC arms are skipped; the study's
notes (printed, and in the report) say so. The ``cpu-long`` profile runs 10 % and 100 % only.

    python studies/label_fraction.py [--profile gpu|paper] [--dc-init best.pt]
"""

import sys

from uslearn.study import StudySpec
from uslearn.study.inits import dc_init, imagenet_init
from uslearn.study_cli import main


def build(args) -> StudySpec:
    """Return the spec with the arms whose initialisation exists."""
    dc, dc_note = dc_init(args.tracking_uri, args.dc_init)
    weights, imagenet_note = imagenet_init()
    if not weights:
        imagenet_note = (
            "ImageNet weights not found (torch hub cache or $USLEARN_IMAGENET; nothing is "
            "downloaded at run time): the arms the paper starts from ImageNet start from "
            "random weights"
        )
    imagenet = {"init": "imagenet", "weights": weights}
    # From ImageNet as in the paper; from random weights when they are missing.
    left, init = ("imagenet", imagenet) if weights else ("random", {"init": "random"})
    # FixMatch's confidence threshold (tau_sensitivity.py sweeps it), and as many unlabelled
    # exams per step as labelled ones (μ = 1): the paper's 16 + 16 at 16-exam batches, and
    # the same ratio when a profile shrinks the batches (cpu-long: 8 + 8).
    semi = {"tau": 0.95, "mu": 1.0}
    arms = {
        f"one-head {left}": {"strategy": "fixmatch_one", **init, **semi},
        f"two-head {left}": {"strategy": "fixmatch_two", **init, **semi},
    }
    # Right panel: supervised from the same initialisation as the left panel's semi-supervised
    # arms, so semi- vs supervised is compared at one init (paired by seed).
    arms[f"supervised {left}"] = {"strategy": "supervised", **init}
    if dc is not None:
        arms["supervised dc"] = {"strategy": "supervised", "init": dc}
        arms["two-head dc"] = {"strategy": "fixmatch_two", "init": dc, **semi}
    return StudySpec(
        name="label_fraction",
        title="Fig. 6: weighted F1 against the labelled fraction, per arm",
        fixed={},
        arms=arms,
        grid={"label_fraction": [0.1, 0.2, 0.5, 1.0]},  # Fig. 6's x axis, nested by exam
        seeds=(0, 1, 2, 3),  # "each experiment was iterated four times"
        notes=(dc_note, imagenet_note),
    )


if __name__ == "__main__":
    sys.exit(main(build, __file__))
