"""The strategy registry and the one entry point every caller uses (docs/CONTRACTS.md).

``run(config, data, report)`` trains one strategy to the end and returns its final metrics. The
same function runs in a plain process (tests, ``uslearn train``), in a Ray Train worker (DDP,
when torch.distributed is initialised) and inside a Tune trial; only ``report`` differs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from uslearn.data.dataset import Dataset
from uslearn.strategies import clustering, fixmatch, supervised
from uslearn.strategies.config import STRATEGY_NAMES, parse_config, resolved_config

# Registry keys equal the MLflow `strategy` param; PICA and LSD share one file (one prior differs).
STRATEGIES: dict[str, ModuleType] = {
    "pica": clustering,
    "lsd": clustering,
    "supervised": supervised,
    "fixmatch_one": fixmatch,
    "fixmatch_two": fixmatch,
}
assert tuple(STRATEGIES) == STRATEGY_NAMES


def run(
    config: dict,
    data: Dataset | str | Path,
    report: Callable[[dict[str, float], str | None], None] | None = None,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, float]:
    """Train one strategy to the end and return its final metrics (docs/CONTRACTS.md names).

    Args:
        config: flat dict of TrainConfig + the strategy's config fields (unknown keys raise).
        data: a dataset directory or an opened Dataset.
        report: called as ``report(metrics, checkpoint_dir)`` at every evaluation on every rank.
        out_dir: where metrics.json, config.json, thresholds.json, per_class.csv, best.pt,
            checkpoint/ (and cluster_labels.csv) go; a temporary directory when None.
        resume_from: a checkpoint directory written by an earlier, interrupted run.

    Returns:
        ``test/*`` metrics of the kept model, ``val/f1_weighted`` (its validation score) and
        ``best_step``.
    """
    import torch

    from uslearn import models
    from uslearn.strategies import evaluation
    from uslearn.strategies.loop import make_context, train

    cfg, *own = parse_config(config)
    data = data if isinstance(data, Dataset) else Dataset.open(data)
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path(tempfile.mkdtemp(prefix=f"uslearn-{cfg.strategy}-"))
    )
    ctx = make_context(cfg)
    strategy = STRATEGIES[cfg.strategy].build(cfg, *own, data=data, ctx=ctx)
    model = models.build_network(strategy.heads, init=cfg.init, weights=cfg.weights or None)
    model, state = train(strategy, model, ctx, out, report=report, resume_from=resume_from)
    with torch.no_grad():
        thresholds, test_report, extra = strategy.finish(model, out)
    kept_step = state.best_step if strategy.keep == "best" else state.step
    kept_score = next(
        (h["val/f1_weighted"] for h in state.history if h["step"] == kept_step), state.best_score
    )
    final = {
        **evaluation.report_metrics(test_report),
        **extra,
        "val/f1_weighted": kept_score,
        "best_step": float(kept_step),
    }
    if ctx.is_main:
        resolved = {**resolved_config(config), "dataset_fingerprint": data.fingerprint}
        evaluation.write_artifacts(out, thresholds, test_report, final, resolved)
        (out / "history.json").write_text(json.dumps(state.history, indent=1))
    return final


__all__ = ["STRATEGIES", "run"]
