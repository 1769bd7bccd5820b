"""Fig. 5 — sensitivity of PICA and LSD to λ, the weight of the cluster-size prior.

Both deep-clustering losses are trained without labels on the unlabelled exams, with
L = L_CE + λ·L_NE (PICA; L_NE is Eq. 4) or L = L_CE + λ·L_SD(α) (LSD, Eq. 7), for
λ ∈ {0.5, 1, 2, 5, 10} and four seeds each: 2 × 5 × 4 = 40 trials. The clusters are mapped
to multi-labels by Algorithm 1 on the labelled exams, thresholds are fitted on validation,
and we compare the weighted F1 on the test set. Every cell runs to the end (no pruner), so
each box of the plot holds all of its seeds.

    python studies/lambda_sensitivity.py                   # cpu-demo profile without a GPU
    python studies/lambda_sensitivity.py --profile paper --data DIR
"""

import sys

from uslearn.study import StudySpec
from uslearn.study_cli import main

SPEC = StudySpec(
    name="lambda_sensitivity",
    title="Fig. 5: weighted F1 of PICA and LSD over λ × seeds",
    fixed={
        # Sec. 3.2: unsupervised models keep the weights of the last epoch; k=0 takes the
        # number of clusters from the labelled set's label combinations (Sec. 2.2.3).
        "k": 0,
    },
    # α = 1 + ε with a small ε (Sec. 2.2.2); only LSD has it.
    arms={"pica": {"strategy": "pica"}, "lsd": {"strategy": "lsd", "alpha": 1.05}},
    grid={"lam": [0.5, 1.0, 2.0, 5.0, 10.0]},  # the paper's five values of λ
    seeds=(0, 1, 2, 3),  # "each experiment was iterated four times" (Sec. 3.2)
)

if __name__ == "__main__":
    sys.exit(main(SPEC, __file__))
