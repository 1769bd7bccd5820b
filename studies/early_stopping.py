"""Beyond the paper — does early stopping in epochs starve fine-tuning at small label fractions?

The paper stops supervised fine-tuning after 7 epochs without validation gain (Sec. 3.2). At
10 % labels an epoch of 16-exam batches is one or two optimiser steps, so that rule may stop a
run after about 14 steps, and a random-initialised arm can lose to a deep-clustering one
partly for lack of budget. This study runs supervised fine-tuning from random weights and from
the best LSD checkpoint under both rules: ``epochs`` (the paper's literal rule) and ``steps``
(the default: validation every ``eval_steps``, patience ``patience_steps`` steps, at least
``min_steps``), four seeds each, paired by seed.

    python studies/early_stopping.py [--profile cpu-long|gpu|paper] [--dc-init best.pt]
"""

import sys

from uslearn.study import StudySpec
from uslearn.study.inits import dc_init
from uslearn.study_cli import main


def build(args) -> StudySpec:
    """Return the spec: supervised × {random, DC init} × {step, epoch rule} at 10 % labels."""
    dc, dc_note = dc_init(args.tracking_uri, args.dc_init)
    inits = {"random": "random", **({"dc": dc} if dc is not None else {})}
    # At most 100 epochs, the paper's cap, under both rules (a cell's length beats the
    # profile's): early stopping, not the profile's budget, ends the runs.
    arms = {
        f"supervised {name} {rule}": {
            "strategy": "supervised",
            "init": init,
            "early_stopping": rule,
            "epochs": 100,
        }
        for name, init in inits.items()
        for rule in ("steps", "epochs")
    }
    return StudySpec(
        name="early_stopping",
        title="Fine-tuning at 10 % labels: early stopping in steps vs the paper's epochs",
        fixed={"label_fraction": 0.1},
        arms=arms,
        seeds=(0, 1, 2, 3),
        notes=(dc_note,),
    )


if __name__ == "__main__":
    sys.exit(main(build, __file__))
