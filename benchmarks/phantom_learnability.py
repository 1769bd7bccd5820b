"""How learnable is the phantom? Trivial baselines vs a supervised ResNet18 on the demo preset.

    python benchmarks/phantom_learnability.py [--data runs/phantom_demo] [--epochs 40]
        [--skip-resnet] [--oracle]

All scores are the paper's metric (Sec. 3.2): support-weighted F1 over the 7 classes on the
test split, with per-class thresholds chosen on the validation split.

- all-positive: every tag predicted on every frame (the floor any model must beat);
- thumbnails: logistic regression on 8x8 average-pooled frames (layout and brightness only);
- texture: ridge regression on fixed random 5x5 convolution features (local texture, edges);
- resnet18: ``uslearn.strategies.run`` with the supervised strategy (random init: ImageNet
  weights cannot be downloaded here), the project's augmentations, early stopping on val.

Baselines are fitted on the labelled split (the paper's protocol) and, as an upper bound, on
labelled + unlabelled frames with the phantom's hidden ground truth (`--oracle` also trains
the ResNet18 that way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.writer import DatasetWriter
from uslearn.phantom import TRUTH, ensure_phantom
from uslearn.phantom.baselines import texture_features, thumbnail_features
from uslearn.strategies.evaluation import test_report as report_with_val_thresholds


def weighted_f1(scores_val, scores_test, y_val, y_test) -> float:
    """Return the test weighted F1 with per-class thresholds fitted on validation (Sec. 3.2)."""
    return float(
        report_with_val_thresholds(scores_val, y_val, scores_test, y_test)[1].loc["weighted", "f1"]
    )


def baselines(data: Dataset, y: np.ndarray, train: np.ndarray, name: str) -> list[dict]:
    """Return the all-positive, thumbnail and texture scores with models fitted on ``train``."""
    images = torch.as_tensor(np.array(data.images), dtype=torch.float32)[:, None] / 255
    val, test = data.indices("val"), data.indices("test")
    rows = [
        {
            "model": "all-positive",
            "train": name,
            "f1": weighted_f1(np.ones((len(val), 7)), np.ones((len(test), 7)), y[val], y[test]),
        }
    ]
    thumbs = StandardScaler().fit(thumbnail_features(images)[train])
    x = thumbs.transform(thumbnail_features(images))
    models = [LogisticRegression(max_iter=2000).fit(x[train], y[train, c]) for c in range(7)]
    probs = np.stack([m.predict_proba(x)[:, 1] for m in models], 1)
    rows.append({"model": "thumbnails-logreg", "train": name,
                 "f1": weighted_f1(probs[val], probs[test], y[val], y[test])})  # fmt: skip
    feats = texture_features(images)
    feats = StandardScaler().fit(feats[train]).transform(feats)
    scores = Ridge(alpha=10.0).fit(feats[train], y[train]).predict(feats)
    rows.append({"model": "texture-ridge", "train": name,
                 "f1": weighted_f1(scores[val], scores[test], y[val], y[test])})  # fmt: skip
    return rows


def oracle_copy(data: Dataset, y: np.ndarray, out: Path) -> Dataset:
    """Return a copy of ``data`` whose unlabelled frames are labelled with the ground truth."""
    manifest = data.manifest.copy()
    unlabelled = manifest["split"] == "unlabelled"
    manifest.loc[unlabelled, "split"] = "labelled"
    for j, name in enumerate(CLASSES):
        manifest[name] = np.where(unlabelled, y[:, j], manifest[name]).astype(np.int8)
    with DatasetWriter(out, data.size, len(data), "phantom-oracle", overwrite=True) as writer:
        writer.write(0, np.asarray(data.images))
        writer.commit(manifest)
    return Dataset.open(out)


def resnet(data: Dataset, epochs: int, size: int, out: Path, name: str) -> dict:
    """Train the supervised strategy (ResNet18) and return its test weighted F1."""
    from uslearn.strategies import run

    start = time.perf_counter()
    config = {"strategy": "supervised", "epochs": epochs, "image_size": size, "device": "auto"}
    final = run(config, data, out_dir=out)
    return {
        "model": "resnet18-supervised",
        "train": name,
        "f1": final["test/f1_weighted"],
        "val_f1": final["val/f1_weighted"],
        "best_step": final["best_step"],
        "minutes": round((time.perf_counter() - start) / 60, 1),
        **{f"f1/{c}": round(final[f"test/f1/{c}"], 3) for c in CLASSES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/phantom_demo"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--oracle", action="store_true", help="also train ResNet18 on all truth")
    parser.add_argument("--out", type=Path, default=Path("runs/phantom_learnability"))
    args = parser.parse_args()
    data = ensure_phantom(args.data, preset="demo")
    y = pd.read_parquet(data.root / TRUTH)[list(CLASSES)].to_numpy()
    labelled = data.indices("labelled")
    everything = np.concatenate([labelled, data.indices("unlabelled")])
    rows = baselines(data, y, labelled, "labelled") + baselines(data, y, everything, "all-truth")
    for row in rows:
        print(json.dumps(row), flush=True)
    if not args.skip_resnet:
        rows.append(resnet(data, args.epochs, args.size, args.out / "labelled", "labelled"))
        print(json.dumps(rows[-1]), flush=True)
        if args.oracle:
            oracle = oracle_copy(data, y, args.out / "oracle_data")
            rows.append(resnet(oracle, args.epochs, args.size, args.out / "all", "all-truth"))
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(args.out / "oracle_data", ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(pd.DataFrame(rows)[["model", "train", "f1"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
