"""What do a study's clusters capture on the phantom: organs, or the scanner and the view?

For every finished clustering run of a study, loads its kept model (``best.pt``: the run's logged model, else its artifact),
assigns each test image to its argmax cluster and prints, per method (mean over runs), the NMI
of the clusters with the target (the label combination of Algorithm 1), with the phantom's
nuisance factors (``vendor``: the simulated scanner; ``view``: the standard plane), and the
balance of the cluster sizes (entropy / log K; 1 = all clusters the same size) next to the
balance of the true label combinations (per λ too when the study sweeps it). docs/RESULTS.md uses it to explain why PICA and LSD do
not separate on the phantom.

    python benchmarks/cluster_factors.py --study unsupervised_table \
        --tracking-uri sqlite:///runs/science/mlflow.db [--data data/demo]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.runs import load
from uslearn import metrics, models
from uslearn.data.dataset import Dataset
from uslearn.strategies.common import Rows
from uslearn.strategies.evaluation import predict_logits
from uslearn.study.logged_models import run_weights


def balance(assignments: np.ndarray, k: int) -> float:
    """Return the entropy of the cluster sizes divided by log K (1 = perfectly balanced)."""
    counts = np.bincount(assignments, minlength=k).astype(float)
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log(share)).sum() / np.log(k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="unsupervised_table")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    args = parser.parse_args()

    data = Dataset.open(args.data)
    frame = load(args.study, tracking_uri=args.tracking_uri)
    frame = frame[frame["family"] == "clustering"]
    manifest = data.manifest
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, run in frame.iterrows():
            split = Rows.of(data, float(run["label_fraction"]), int(run["seed"]))
            combos = metrics.label_combinations(data.labels[split.labelled], min_count=2)
            path = run_weights(args.tracking_uri, run["run_id"], f"{tmp}/{run['run_id']}")
            if path is None:
                raise SystemExit(f"run {run['run_id']}: no kept weights (best.pt) logged")
            network, config = models.load_network(path, head="cluster")
            clusters = predict_logits(
                network, data, split.test, "cluster", config["image_size"], torch.device("cpu")
            ).argmax(axis=1)
            k = network.head_sizes["cluster"]
            factors = {
                "target (label combination)": combos.encode(data.labels[split.test]),
                "vendor": manifest["vendor"].to_numpy()[split.test],
                "view": manifest["view"].to_numpy()[split.test],
            }
            truth = factors["target (label combination)"]
            rows.append(
                {
                    "strategy": run["strategy"],
                    "lam": run.get("lam", float("nan")),
                    "seed": run["seed"],
                    **{f"NMI {name}": metrics.nmi(v, clusters) for name, v in factors.items()},
                    "cluster balance": balance(clusters, k),
                    "target balance": balance(truth, len(combos)),
                }
            )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3f"))
    print()
    # Per method, and per λ when the study sweeps it (IIC has none).
    keys = ["strategy", "lam"] if table["lam"].nunique() > 1 else ["strategy"]
    means = table.drop(columns=["seed", *{"lam"} - set(keys)]).groupby(keys, dropna=False).mean()
    print(means.to_string(float_format="%.3f"))


if __name__ == "__main__":
    main()
