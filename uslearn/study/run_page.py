"""What a finished run's MLflow page shows first: its test F1 and its learning curves.

MLflow's run page opens on the description (the tag ``mlflow.note.content``, Markdown) and
lists the run's figures under Artifacts; its metrics page is alphabetical, so the ≈ 34
single-point ``test/...`` charts come before the curves. The metric names stay (they are the
contract ``analysis/`` reads): instead ``describe_run`` logs ``learning_curves.png`` (training
loss and validation F1 against the step, from the run's ``history.json``) and a description
that leads with the test F1 and points at the figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from uslearn.log import get_logger

log = get_logger(__name__)

CURVES = "learning_curves.png"
NOTE_TAG = "mlflow.note.content"


def curves_figure(history: list[dict]):
    """Return a matplotlib Figure: train/loss and val/f1_weighted against step (two panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    for ax, key, title in zip(
        axes, ("train/loss", "val/f1_weighted"), ("training loss", "validation F1 (weighted)")
    ):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(f"{title} ({key})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def describe(final: dict[str, float], strategy: str, evaluations: int) -> str:
    """Return the run's description (Markdown): test F1 first, then where the curves are."""
    lines = [
        f"**test F1 (weighted): {final.get('test/f1_weighted', float('nan')):.4f}**"
        f" · validation F1 {final.get('val/f1_weighted', float('nan')):.4f}"
        f" · {strategy}",
        "",
        f"Learning curves ({evaluations} evaluation{'' if evaluations == 1 else 's'}): Artifacts → `{CURVES}`; the curves "
        "themselves are the metrics `train/loss` and `val/f1_weighted` (Model metrics tab).",
    ]
    return "\n".join(lines)


def describe_run(mlc, run_id: str, out_dir: str | Path, final: dict[str, float]) -> None:
    """Log the learning-curve figure and the description of a finished run; never fail it."""
    try:
        history = json.loads((Path(out_dir) / "history.json").read_text())
        config = json.loads((Path(out_dir) / "config.json").read_text())
        if history:
            mlc.log_figure(run_id, curves_figure(history), CURVES)
        mlc.set_tag(run_id, NOTE_TAG, describe(final, config.get("strategy", "?"), len(history)))
    except Exception as err:  # noqa: BLE001 - a finished run stays finished
        log.warning("run %s: its page summary was not logged (%s)", run_id, err)
