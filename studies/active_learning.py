"""Which images to label next? Active learning over the labelled split, by exam.

The labelled split is the pool and its labels the oracle's, revealed only for the exams an
acquisition function picks. Each trial (function × init × seed) runs rounds: pick exams,
reveal their labels, fine-tune the supervised model (Sec. 2.2.4) from its init on every label
revealed so far, test it; MLflow logs each round at its number of labels. Functions: random
(the baseline), entropy (mean binary entropy), uncertainty (logit margin to the validation
thresholds), coreset (k-center greedy on the model's features) and cluster (spread over the
deep-clustering model's clusters × proposed label sets: the paper's idea, with curate's
priority). Without a deep-clustering checkpoint the cluster function and the DC init are
skipped; without ImageNet weights the ImageNet init is (the notes say so).

    python studies/active_learning.py [--profile cpu-long|gpu|paper] [--dc-init best.pt] [--seeds 3]
"""

import sys

from uslearn.study import StudySpec
from uslearn.study.inits import dc_init, imagenet_init
from uslearn.study_cli import main

# Per profile: rounds, exams revealed per round (first round and later ones), and each
# round's training: a step rule with a short floor, since a round's labels are few exams.
# CPU profiles: 4 exams a round, 4-exam batches of at most 8 frames.
SMALL_ROUNDS = {"initial": 4, "budget": 4, "batch_exams": 4, "max_images_per_exam": 8}
ROUNDS = {
    "cpu-demo": {**SMALL_ROUNDS, "rounds": 4, "min_steps": 30, "patience_steps": 20, "epochs": 1},
    "cpu-long": {**SMALL_ROUNDS, "rounds": 6, "min_steps": 80, "patience_steps": 40, "epochs": 3},
    # Real scale: the paper's 224 labelled exams revealed 16 at a time up to ~half of them.
    "gpu": {"rounds": 8, "initial": 16, "budget": 16, "min_steps": 300},
    "paper": {"rounds": 10, "initial": 16, "budget": 16, "min_steps": 300},
}
SMALL = ("random", "uncertainty", "coreset", "cluster")  # cpu-demo: 29 min, 3 seeds, busy CPU
ALL = ("random", "entropy", "uncertainty", "coreset", "cluster")


def build(args) -> StudySpec:
    """Return the spec: every acquisition function × the inits that exist."""
    dc, dc_note = dc_init(args.tracking_uri, args.dc_init)
    weights, imagenet_note = imagenet_init()
    small = (args.profile or "cpu-demo") == "cpu-demo"
    inits = {"random": {"init": "random"}}
    if not small and weights:
        inits["imagenet"] = {"init": "imagenet", "weights": weights}
    if not small and dc:
        inits["dc"] = {"init": dc}
    functions = [f for f in (SMALL if small else ALL) if f != "cluster" or dc]
    arms = {
        f"{function} {name}": {"acquisition": function, **init, **({"dc_model": dc} if dc else {})}
        for name, init in inits.items()
        for function in functions
    }
    return StudySpec(
        name="active_learning",
        title="Label efficiency: test weighted F1 against labels, per acquisition function",
        fixed={"strategy": "supervised", "budget_unit": "exams"},  # the paper batches by exam
        arms=arms,
        seeds=(0, 1, 2, 3),
        profile_fixed=ROUNDS,
        notes=(dc_note, imagenet_note, "cpu-demo: random init, four functions only"),
    )


if __name__ == "__main__":
    sys.exit(main(build, __file__))
