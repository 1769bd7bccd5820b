"""The one entry point every caller uses to train a strategy (docs/CONTRACTS.md).

``run(config, data, report)`` trains one strategy to the end and returns its final metrics. The
same function runs in a plain process (tests, ``uslearn train``), in a Ray Train worker (DDP,
when torch.distributed is initialised) and inside a Tune trial; only ``report`` differs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from uslearn import files, models
from uslearn.data.dataset import Dataset
from uslearn.strategies import evaluation
from uslearn.strategies.context import make_context
from uslearn.strategies.loop import OnEvaluation, train
from uslearn.strategies.registry import entry, parse_config, resolved_config


def run(
    config: dict,
    data: Dataset | str | Path,
    report: OnEvaluation | None = None,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, float]:
    """Train one strategy to the end and return its final metrics (the MLflow contract's names).

    Args:
        config: flat dict of TrainConfig + the strategy's own config fields (unknown keys raise).
        data: a dataset directory or an opened Dataset.
        report: called as ``report(metrics, checkpoint_dir)`` at every evaluation on every rank.
        out_dir: where metrics.json, config.json, thresholds.json, per_class.csv, best.pt,
            checkpoint/ (and cluster_labels.csv) go; a temporary directory when None.
        resume_from: a checkpoint directory written by an earlier, interrupted run of the
            same config and dataset (only the length, epochs or steps, may differ).

    Returns:
        ``test/*`` metrics of the kept model, ``val/f1_weighted`` (its validation score) and
        ``best_step``.

    Raises:
        UserError: a bad config, dataset or checkpoint (one line naming it).
        EnvError: disk full or permission denied while writing (the earlier files are kept).
    """
    cfg, own = parse_config(config)
    data = data if isinstance(data, Dataset) else Dataset.open(data)
    # What ran: config.json at the end, and every checkpoint (a resume compares it).
    resolved = {**resolved_config(config), "dataset_fingerprint": data.fingerprint}
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path(tempfile.mkdtemp(prefix=f"uslearn-{cfg.strategy}-"))
    )
    ctx = make_context(cfg)
    strategy = entry(cfg.strategy).load().build(cfg, own, data=data, ctx=ctx)
    model = models.build_network(strategy.heads, init=cfg.init, weights=cfg.weights or None)
    model, state = train(
        strategy, model, ctx, out, report=report, resume_from=resume_from, record=resolved
    )
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
        evaluation.write_artifacts(out, thresholds, test_report, final, resolved)
        files.write_text(out / "history.json", json.dumps(state.history, indent=1), "the history")
    return final
