"""Beyond the paper — sensitivity of LSD to α, the Dirichlet concentration of Eq. 7.

The paper fixes α = 1 + ε "slightly higher than 1" and argues the two limits: α ≫ 1 forces
uniform cluster sizes (like PICA's L_NE), α → 1 lets one cluster take every image. It asks for
the sweep it does not show; we run it: LSD at λ = 2 over α ∈ {1.001, 1.01, 1.05, 1.1, 1.5, 2}
with four seeds each, every cell to the end (no pruner).

    python studies/alpha_sensitivity.py [--profile gpu|paper] [--data DIR]
"""

import sys

from uslearn.study import StudySpec
from uslearn.study_cli import main

SPEC = StudySpec(
    name="alpha_sensitivity",
    title="LSD: weighted F1 over α × seeds (λ = 2)",
    fixed={
        "strategy": "lsd",
        "lam": 2.0,  # the paper's λ, so that only α moves
        "k": 0,  # clusters = the labelled set's common label combinations
    },
    # From barely above 1 (ε = 0.001) to α = 2, where the prior is close to uniform-forcing.
    grid={"alpha": [1.001, 1.01, 1.05, 1.1, 1.5, 2.0]},
    seeds=(0, 1, 2, 3),  # as many seeds as the paper's other ablations
)

if __name__ == "__main__":
    sys.exit(main(SPEC, __file__))
