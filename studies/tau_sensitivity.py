"""Beyond the paper — FixMatch Two-Head's sensitivity to τ at 10 % labels.

τ decides which unlabelled images get a pseudo-label (max softmax probability ≥ τ over the
label combinations). FixMatch's 0.95 was tuned on CIFAR; with few labels and a skewed class
prior a lower τ may admit more useful pseudo-labels, or more wrong ones. We sweep
τ ∈ {0.7, 0.8, 0.9, 0.95, 0.99} at 10 % labels, four seeds each, from the deep-clustering init
when one exists (Strategy 4, the paper's best), else ImageNet, else random weights.

    python studies/tau_sensitivity.py [--profile gpu|paper] [--dc-init best.pt]
"""

import sys

from uslearn.study import StudySpec
from uslearn.study.inits import best_init
from uslearn.study_cli import main


def build(args) -> StudySpec:
    """Return the spec, initialised from the best available backbone."""
    init, notes = best_init(args.tracking_uri, args.dc_init)
    return StudySpec(
        name="tau_sensitivity",
        title="FixMatch Two-Head: weighted F1 over τ at 10 % labels",
        fixed={
            "strategy": "fixmatch_two",
            **init,
            "label_fraction": 0.1,  # where pseudo-labels matter most (275 images in the paper)
        },
        grid={"tau": [0.7, 0.8, 0.9, 0.95, 0.99]},
        seeds=(0, 1, 2, 3),
        notes=notes,
    )


if __name__ == "__main__":
    sys.exit(main(build, __file__))
