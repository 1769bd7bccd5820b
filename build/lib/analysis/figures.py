"""The paper's figures from a runs frame: Fig. 5 (λ box plot), Fig. 6 (F1 vs label fraction),
α and τ sensitivity plots. Colour = strategy and line style/marker = initialisation, the same in
every figure, so an arm is recognised at a glance across the report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.stats import METRIC, method_text, summarize  # noqa: E402
from uslearn.errors import UserError  # noqa: E402
from uslearn.strategies.registry import ENTRIES, param_label  # noqa: E402

_PALETTE = sns.color_palette("colorblind", 10)
# One colour and one display name per strategy, from the registry, so every figure agrees;
# strategies are drawn in registry order.
COLOURS = {name: _PALETTE[e.colour] for name, e in ENTRIES.items()}
STRATEGY_NAMES = {name: e.label for name, e in ENTRIES.items()}
INIT_NAMES = {"imagenet": "ImageNet", "clustering": "DC", "random": "random"}
# Initialisation is drawn by line style and marker (DC solid, the paper's proposal).
INIT_STYLES = {"clustering": ("-", "o"), "imagenet": ("--", "s"), "random": (":", "^")}
Y_LABEL = "Test F1-score, weighted average (%)"
DPI = 200


def colour(strategy: str) -> tuple[float, float, float]:
    """Return the colour of a strategy (grey for one the registry does not name)."""
    return COLOURS.get(strategy, (0.4, 0.4, 0.4))


def arm_name(strategy: str, init_kind: str | None = None) -> str:
    """Return the display name of an arm, e.g. ``Two-Head · DC``."""
    name = STRATEGY_NAMES.get(strategy, strategy)
    if not isinstance(init_kind, str) or not init_kind:  # None or NaN: no init to name
        return name
    return f"{name} · {INIT_NAMES.get(init_kind, init_kind)}"


def save(fig: plt.Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` in ``out_dir``, close it; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths


def _percent(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame[metric].astype(float) * 100.0


def sweep_boxplot(
    frame: pd.DataFrame,
    param: str,
    metric: str = METRIC,
    title: str | None = None,
    max_boxes: int = 10,
) -> plt.Figure:
    """Return a box plot of ``metric`` against the values of ``param``, one colour per strategy.

    Seeds are drawn as points over the boxes (Fig. 5 style). When ``param`` takes more than
    ``max_boxes`` values (a continuous search rather than a grid) it draws one point per run
    against a numeric axis instead (log scale when the values span 10× or more).

    Raises:
        UserError: if ``param`` or ``metric`` is missing or has no value.
    """
    for col in (param, metric, "strategy"):
        if col not in frame or frame[col].isna().all():
            raise UserError(f"cannot plot {metric} against {param}: no run has '{col}'")
    data = frame.dropna(subset=[param, metric]).copy()
    data["value"] = _percent(data, metric)
    strategies = [s for s in COLOURS if s in set(data["strategy"])] + sorted(
        set(data["strategy"]) - set(COLOURS)
    )
    data["arm"] = data["strategy"].map(arm_name)
    hue_order = [arm_name(s) for s in strategies]
    palette = {arm_name(s): colour(s) for s in strategies}
    values = np.sort(data[param].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * min(len(values), max_boxes) + 2.5), 4.2))
    if len(values) <= max_boxes:
        data["x"] = data[param].map(lambda v: f"{v:g}")
        order = [f"{v:g}" for v in values]
        common = dict(data=data, x="x", y="value", hue="arm", order=order, hue_order=hue_order)
        sns.boxplot(**common, palette=palette, showfliers=False, width=0.7, ax=ax, fill=False)
        sns.stripplot(
            **common,
            palette=palette,
            dodge=len(hue_order) > 1,
            jitter=0.12,
            size=5,
            alpha=0.8,
            legend=False,
            ax=ax,
        )
    else:
        sns.scatterplot(
            data=data, x=param, y="value", hue="arm", hue_order=hue_order, palette=palette, ax=ax
        )
        if values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
    seeds = data.groupby(["arm", param]).size()
    count = f"{seeds.min()}" + (f"–{seeds.max()}" if seeds.max() > seeds.min() else "")
    symbol = param_label(param).split(" (")[0]
    ax.set_xlabel(param_label(param))
    ax.set_ylabel(Y_LABEL)
    runs = "run" if count == "1" else "runs"
    detail = f"{count} {runs} per box" if len(values) <= max_boxes else "one point per run"
    ax.set_title(title or f"Test weighted F1 against {symbol} ({detail})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title=None, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def fraction_plot(
    panels: list[tuple[str, pd.DataFrame]],
    metric: str = METRIC,
    method: str = "t",
    level: float = 0.95,
    n_boot: int = 10000,
) -> plt.Figure:
    """Return Fig. 6: mean and CI of ``metric`` against label fraction, one panel per entry.

    Args:
        panels: ``(title, runs)`` pairs; in each panel an arm is a (strategy, init_kind) pair,
            coloured by strategy and styled by initialisation.
        method: ``"t"`` or ``"bootstrap"``; written on the figure with ``level``.

    Raises:
        UserError: if a panel has no run with a label fraction.
    """
    suptitle = f"Weighted F1 against the labelled fraction: {method_text(method, level, n_boot)}"
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.6 * len(panels), 4.6), sharey=True, squeeze=False
    )
    for ax, (title, runs) in zip(axes[0], panels):
        runs = runs.dropna(subset=["label_fraction", metric])
        if runs.empty:
            raise UserError(f"panel '{title}': no run has both label_fraction and {metric}")
        runs = runs.assign(value=_percent(runs, metric), init_kind=runs["init_kind"].fillna("?"))
        table = summarize(
            runs, ["strategy", "init_kind", "label_fraction"], "value", level, method, n_boot
        )
        fractions = np.sort(table["label_fraction"].unique())
        position = {f: i for i, f in enumerate(fractions)}
        arms = list(table.groupby(["strategy", "init_kind"], sort=False).groups)
        arms.sort(key=lambda a: (list(COLOURS).index(a[0]) if a[0] in COLOURS else 99, a[1]))
        # Shift arms sideways a little so their error bars do not cover each other.
        offsets = np.linspace(-0.12, 0.12, len(arms)) if len(arms) > 1 else [0.0]
        for (strategy, init), offset in zip(arms, offsets):
            rows = table[(table["strategy"] == strategy) & (table["init_kind"] == init)]
            x = rows["label_fraction"].map(position).to_numpy() + offset
            low = (rows["mean"] - rows["low"]).to_numpy()
            high = (rows["high"] - rows["mean"]).to_numpy()
            style, marker = INIT_STYLES.get(init, ("-.", "D"))
            seeds = f"n = {rows['n'].min()}" + (
                f"–{rows['n'].max()}" if rows["n"].max() != rows["n"].min() else ""
            )
            ax.errorbar(
                x,
                rows["mean"],
                yerr=np.nan_to_num(np.vstack([low, high])),
                color=colour(strategy),
                linestyle=style,
                marker=marker,
                capsize=4,
                label=f"{arm_name(strategy, init)} ({seeds})",
            )
        ax.set_xticks(range(len(fractions)), [f"{f * 100:g} %" for f in fractions])
        ax.set_xlim(-0.5, len(fractions) - 0.5)
        ax.set_xlabel("Labelled images used (% of the labelled set)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(frameon=False, fontsize="small", loc="best")
    axes[0][0].set_ylabel(Y_LABEL)
    fig.suptitle(suptitle, fontsize="medium")
    fig.tight_layout()
    return fig


def fig6_panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Return the Fig. 6 panels the runs allow: left One-Head vs Two-Head, right supervised vs
    semi-supervised (Two-Head, else One-Head) × initialisation.

    The left panel needs both heads; the right one two arms or two label fractions.
    """
    if "label_fraction" not in frame or "strategy" not in frame:
        return []
    runs = frame.dropna(subset=["label_fraction"])
    strategies = set(runs["strategy"])
    panels = []
    heads = runs[runs["strategy"].isin(["fixmatch_one", "fixmatch_two"])]
    if {"fixmatch_one", "fixmatch_two"} <= strategies:
        panels.append(("One-Head vs Two-Head (semi-supervised)", heads))
    semi = "fixmatch_two" if "fixmatch_two" in strategies else "fixmatch_one"
    right = runs[runs["strategy"].isin(["supervised", semi])]
    if (
        right.groupby(["strategy", "init_kind"]).ngroups >= 2
        or right["label_fraction"].nunique() > 1
    ):
        name = STRATEGY_NAMES[semi]
        panels.append((f"Supervised vs semi-supervised ({name}), by initialisation", right))
    return panels
