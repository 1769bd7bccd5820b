"""Beyond the paper — a TPE search over LSD's λ, α and learning rate, with ASHA pruning.

Optuna's TPE sampler proposes (λ, α, lr); each trial trains LSD and is ranked by the
validation weighted F1 (never the test set). ASHA stops trials that trail their rung after a
grace period (in epochs), so the budget goes to promising regions. The best configuration can
then be re-run over seeds with alpha_sensitivity.py (--set lam=... --set lr=...).

    python studies/search_lsd.py [--profile gpu|paper] [--data DIR]
"""

import sys

from uslearn.study import LogUniform, Search, StudySpec
from uslearn.study_cli import main

SPEC = StudySpec(
    name="search_lsd",
    title="LSD: Optuna TPE search over λ, α and learning rate (ASHA)",
    fixed={"k": 0},  # clusters = the labelled set's common label combinations
    arms={"lsd": {"strategy": "lsd"}},
    search=Search(
        space={
            "lam": LogUniform(0.25, 20.0),  # brackets the paper's 0.5..10 sweep
            "alpha": LogUniform(1.001, 2.0),  # 1 + ε up to a near-uniform prior
            "lr": LogUniform(1e-5, 1e-3),  # a decade either side of the paper's 1e-4
        },
        # TPE needs ~10 random start-up trials before it models anything.
        num_samples={"cpu-demo": 6, "gpu": 48, "paper": 64},
        asha=True,
        grace_period=3,  # epochs: clustering losses are noisy in the first ones
    ),
    seeds=(0,),
)

if __name__ == "__main__":
    sys.exit(main(SPEC, __file__))
