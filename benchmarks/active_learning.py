"""Label efficiency of the acquisition functions: AUC against random, labels to reach an F1.

Reads the latest invocation of ``studies/active_learning.py`` from an MLflow store and prints
the figures docs/ACTIVE_LEARNING.md quotes (run the study first):

    python studies/active_learning.py --seeds 3 --dc-init DC.pt --mlflow sqlite:///$PWD/runs/al/mlflow.db
    python benchmarks/active_learning.py --mlflow sqlite:///$PWD/runs/al/mlflow.db [--out runs/al/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis import active_learning
from analysis.runs import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow", required=True, help="tracking URI of the study's runs")
    parser.add_argument("--out", default="runs/al/figures", help="where the figure goes")
    parser.add_argument("--target", type=float, default=None, help="F1 to reach (0..1)")
    args = parser.parse_args()
    frame = load("active_learning", tracking_uri=args.mlflow, require=())
    files, tests, reach, auc, target = active_learning.write(
        frame, Path(args.out), args.mlflow, target=args.target
    )
    points = active_learning.curves(frame, args.mlflow)
    pd.set_option("display.width", 160)
    print(f"{frame['seed'].nunique()} seeds, {len(frame)} runs; figure: {files[0]}")
    per_round = points.assign(round=points.groupby("run_id").cumcount())
    print("\nmean labels and test weighted F1 (%) per round:")
    table = per_round.groupby(["acquisition", "round"]).agg(
        labels=("labels", "mean"), f1=("f1", lambda v: 100 * v.mean())
    )
    print(table.unstack("acquisition").round(1).to_string())
    print("\nAUC (mean test weighted F1 over the common label range, %), 95 % t CI:")
    print((auc.set_index(["acquisition", "init_kind"]) * [1, 100, 100, 100]).round(2).to_string())
    print("\nAUC of each function minus random, paired by seed (percentage points):")
    cols = ["a", "init_kind", "n", "mean_diff", "ci_low", "ci_high", "p_t", "p_w"]
    shown = tests[cols].copy()
    shown[["mean_diff", "ci_low", "ci_high"]] *= 100
    print(shown.round(3).to_string(index=False))
    print(f"\nlabels needed to reach test weighted F1 = {100 * target:.1f} %:")
    print(reach.round(1).to_string(index=False))


if __name__ == "__main__":
    main()
