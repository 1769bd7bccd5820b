"""What one trial stores: its weights, its MLflow model and its small run artifacts.

    python benchmarks/model_storage.py            # ~1 min on CPU (two 1-epoch tiny runs)

Prints the size of ResNet18's ``best.pt`` (built directly, and written by real runs at 32 px:
the weights do not depend on the image size), and for a real ``uslearn train --mlflow`` run
of a supervised and of a clustering strategy on the tiny phantom: the MLflow model's bytes
besides ``best.pt`` and the run's small artifacts. ``uslearn/study/storage.py`` uses these
figures for ``--dry-run``'s storage line.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uslearn.study.storage import fmt_bytes, tree_bytes, weights_bytes  # noqa: E402

TINY = ["--size", "32", "--batch-exams", "16", "--max-images-per-exam", "1", "--device", "cpu"]


def one_run(root: Path, data: Path, strategy: str) -> tuple[int, int, int]:
    """Return (best.pt bytes, model bytes besides best.pt, run artifact bytes) of one run
    (file sizes, as ``storage.tree_bytes`` counts them)."""
    import mlflow

    from uslearn.cli import main

    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / strategy
    args = ["train", "--data", str(data), "--strategy", strategy, "--epochs", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--out", str(out), "--mlflow", uri, *TINY]) == 0
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("uslearn-train").experiment_id
    run = client.search_runs([experiment], filter_string=f"params.strategy = '{strategy}'")[0]
    (model,) = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    location = Path(model.artifact_location.removeprefix("file://"))
    (weights,) = location.rglob("best.pt")
    best = weights.stat().st_size
    in_model = tree_bytes(location)
    in_run = tree_bytes(run.info.artifact_uri.removeprefix("file://"))
    return best, in_model - best, in_run


def main() -> None:
    from uslearn.models import Network
    from uslearn.phantom import ensure_phantom

    params = sum(p.numel() for p in Network({"multilabel": 7}).parameters())
    print(f"ResNet18 + 7-class head: {params:,} parameters, best.pt {fmt_bytes(weights_bytes())}")
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_phantom(Path(tmp) / "tiny", preset="tiny").root
        for strategy in ("supervised", "lsd"):
            best, extra, run = one_run(Path(tmp), data, strategy)
            print(
                f"{strategy:>10} (32 px): best.pt {best} B ({best - weights_bytes()} B more than "
                f"the state dict: its config), MLflow model besides it {extra} B, "
                f"run artifacts {run} B"
            )


if __name__ == "__main__":
    main()
