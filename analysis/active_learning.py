"""Label efficiency of active-learning runs: curves, areas under them, labels to reach an F1.

Each active-learning child run logged ``al/test_f1_weighted`` once per round at step = its
number of labels (``uslearn.study.rounds``). Budgets count exams, so two runs reach different
label counts; every run's curve is interpolated linearly onto one grid of label counts
spanning the range *all* runs cover (no extrapolation), and seeds are then averaged at each
grid point (seaborn's estimator: mean and a 95 % bootstrap interval over seeds).

- AUC of a run = trapezoid area under its interpolated curve divided by the grid's width: the
  mean weighted F1 over the label range, comparable across functions. Each function is
  compared with ``random`` paired by seed (``stats.paired_comparison``: seed s of both
  functions shares the initialisation and the round-0 picks, which are random for both).
- Labels to reach F1 = x: the first label count at which a run's curve (linear between
  rounds) reaches x; runs that never do are counted, not averaged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, stats, tables
from analysis.report_html import Section
from uslearn.errors import UserError

CURVE = "al/test_f1_weighted"
BASELINE = "random"
GRID_POINTS = 25


def has_rounds(frame: pd.DataFrame) -> bool:
    """Return True when the runs are active-learning trials (an ``acquisition`` param)."""
    return "acquisition" in frame and frame["acquisition"].notna().any()


def curves(frame: pd.DataFrame, tracking_uri: str | None) -> pd.DataFrame:
    """Return one row per (run, round): ``run_id, acquisition, init_kind, seed, labels, f1``.

    Read from each run's MLflow history of ``al/test_f1_weighted`` (step = labels).
    """
    from mlflow.tracking import MlflowClient

    from uslearn.paths import default_tracking_uri

    client = MlflowClient(tracking_uri or default_tracking_uri())
    rows = []
    for run in frame[frame["acquisition"].notna()].itertuples():
        for point in client.get_metric_history(run.run_id, CURVE):
            rows.append(
                {
                    "run_id": run.run_id,
                    "acquisition": run.acquisition,
                    "init_kind": getattr(run, "init_kind", None) or "random",
                    "seed": int(run.seed),
                    "labels": int(point.step),
                    "f1": float(point.value),
                }
            )
    if not rows:
        raise UserError(f"no run has a history of {CURVE}")
    points = pd.DataFrame(rows).sort_values(["run_id", "labels"])
    # One point per round: a value logged twice at one step (a retried request) counts once.
    return points.drop_duplicates(["run_id", "labels"], keep="last").reset_index(drop=True)


def common_grid(points: pd.DataFrame, n: int = GRID_POINTS) -> np.ndarray:
    """Return ``n`` label counts from the largest first label count to the smallest last one.

    Raises:
        UserError: the runs share no label range (a run with one round, or disjoint ranges).
    """
    spans = points.groupby("run_id")["labels"].agg(["min", "max"])
    low, high = spans["min"].max(), spans["max"].min()
    if not high > low:
        raise UserError(
            f"the runs share no range of label counts (common range {low}..{high}): "
            "each needs two rounds or more"
        )
    return np.linspace(low, high, n)


def interpolated(points: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
    """Return every run's F1 linearly interpolated at each label count of ``grid``."""
    parts = []
    for (run_id, acquisition, init, seed), run in points.groupby(
        ["run_id", "acquisition", "init_kind", "seed"], sort=False
    ):
        f1 = np.interp(grid, run["labels"].to_numpy(float), run["f1"].to_numpy(float))
        parts.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "acquisition": acquisition,
                    "init_kind": init,
                    "seed": seed,
                    "labels": grid,
                    "f1": f1,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def areas(on_grid: pd.DataFrame) -> pd.DataFrame:
    """Return one row per run with ``auc``: ∫ F1 d(labels) / (grid width), the mean F1 over
    the common label range (trapezoid rule)."""
    rows = []
    for key, run in on_grid.groupby(["run_id", "acquisition", "init_kind", "seed"], sort=False):
        x, y = run["labels"].to_numpy(float), run["f1"].to_numpy(float)
        auc = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))
        rows.append(dict(zip(["run_id", "acquisition", "init_kind", "seed"], key), auc=auc))
    return pd.DataFrame(rows)


def labels_to_reach(points: pd.DataFrame, target: float) -> pd.DataFrame:
    """Return per run the first label count at which its curve reaches ``target`` (NaN: never).

    Between two rounds the curve is a straight line, so the crossing is interpolated.
    """
    rows = []
    for key, run in points.groupby(["run_id", "acquisition", "init_kind", "seed"], sort=False):
        x, y = run["labels"].to_numpy(float), run["f1"].to_numpy(float)
        reached = math.nan
        if y[0] >= target:
            reached = x[0]
        else:
            for i in range(1, len(y)):
                if y[i] >= target > y[i - 1]:
                    reached = x[i - 1] + (target - y[i - 1]) / (y[i] - y[i - 1]) * (x[i] - x[i - 1])
                    break
        rows.append(dict(zip(["run_id", "acquisition", "init_kind", "seed"], key), labels=reached))
    return pd.DataFrame(rows)


def auc_tests(auc: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Return each function's AUC minus the baseline's, paired by seed, per init (t and
    Wilcoxon from ``stats.paired_test``), with a 95 % Student t interval of the difference."""
    from scipy import stats as scipy_stats

    parts = []
    for function in [f for f in auc["acquisition"].unique() if f != baseline]:
        table = stats.paired_comparison(
            auc, "acquisition", function, baseline, metric="auc", by=("init_kind",)
        )
        parts.append(table)
    if not parts:
        raise UserError(f"no function to compare with '{baseline}'")
    table = pd.concat(parts, ignore_index=True)
    half = [
        scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n >= 2 else math.nan
        for n, sd in zip(table["n"], table["sd_diff"])
    ]
    table["ci_low"] = table["mean_diff"] - np.asarray(half)
    table["ci_high"] = table["mean_diff"] + np.asarray(half)
    return table


def curve_figure(on_grid: pd.DataFrame, points: pd.DataFrame, level: float = 0.95):
    """Return the label-efficiency figure: one line per function (mean, bootstrap CI over
    seeds, seaborn's estimator), each run's own rounds as faint dots."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from uslearn.acquisition import ENTRIES

    palette = {
        name: figures._PALETTE[e.colour]
        for name, e in ENTRIES.items()
        if name in set(points["acquisition"])
    }
    names = {name: ENTRIES[name].label for name in palette}
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    data = on_grid.assign(f1=on_grid["f1"] * 100, Function=on_grid["acquisition"].map(names))
    # Line style tells inits apart, as in Fig. 6; a single init is drawn solid.
    several = data["init_kind"].nunique() > 1
    styles = {"random": ":", "imagenet": "--", "clustering": "-"} if several else {}
    for init, part in data.groupby("init_kind"):
        sns.lineplot(
            data=part,
            x="labels",
            y="f1",
            hue="acquisition",
            palette=palette,
            errorbar=("ci", level * 100),
            seed=0,
            linestyle=styles.get(init, "-"),
            ax=ax,
            legend=False,
        )
    ax.scatter(
        points["labels"],
        points["f1"] * 100,
        c=[palette[a] for a in points["acquisition"]],
        s=8,
        alpha=0.35,
    )
    handles = [plt.Line2D([], [], color=palette[n], label=names[n]) for n in palette]
    inits = sorted(data["init_kind"].unique())
    if len(inits) > 1:
        handles += [
            plt.Line2D([], [], color="k", ls=styles.get(i, "-"), label=f"init {i}") for i in inits
        ]
    ax.legend(handles=handles, frameon=False)
    n_seeds = points.groupby("acquisition")["seed"].nunique().min()
    ax.set(
        xlabel="Labelled images (revealed by the oracle)",
        ylabel=figures.Y_LABEL,
        title=f"Label efficiency: mean and {level:.0%} CI over {n_seeds} seeds",
    )
    return fig


def write(frame: pd.DataFrame, out: Path, tracking_uri: str | None, target: float | None = None):
    """Write the curve figure and the AUC / labels-to-reach tables into ``out``.

    Returns:
        (figure files, AUC tests table, labels-to-reach table, the target F1 used): the target
        is, by default, the mean F1 ``random`` reaches at its last round.
    """
    points = curves(frame, tracking_uri)
    grid = common_grid(points)
    on_grid = interpolated(points, grid)
    fig_files = figures.save(curve_figure(on_grid, points), out, "fig_label_efficiency")
    auc = areas(on_grid)
    tests = auc_tests(auc)
    if target is None:
        last = points.sort_values("labels").groupby("run_id").tail(1)
        base = last[last["acquisition"] == BASELINE]
        target = float((base if len(base) else last)["f1"].mean())
    reach = labels_to_reach(points, target)
    reached = reach.dropna(subset=["labels"])
    summary = stats.summarize(reached, ["acquisition", "init_kind"], metric="labels")
    counts = reach.groupby(["acquisition", "init_kind"]).size().rename("runs").reset_index()
    summary = summary.merge(counts, on=["acquisition", "init_kind"], how="right")
    summary = summary.rename(columns={"n": "reached"}).fillna({"reached": 0})
    auc_summary = stats.summarize(auc, ["acquisition", "init_kind"], metric="auc")
    return fig_files, tests, summary, auc_summary, target


def _percent(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    return table.assign(**{c: table[c] * 100.0 for c in columns if c in table})


def sections(
    frame: pd.DataFrame, out: Path, tracking_uri, parent: dict, log: bool
) -> list[Section]:
    """Return the label-efficiency figure, AUC tests against random and labels to reach an F1
    (active-learning runs only); log each function's mean AUC to the parent run."""
    if not has_rounds(frame):
        return []
    files, tests, reach, auc, target = write(frame, out, tracking_uri)
    caption = (
        "Test weighted F1 against the labels revealed, one line per acquisition function: "
        "mean and 95 % bootstrap CI over seeds (seaborn), each run interpolated onto the "
        "label range every run covers; dots: the rounds themselves."
    )
    tests = _percent(tests, ("mean_a", "mean_b", "mean_diff", "sd_diff", "ci_low", "ci_high"))
    tests = tests.set_index(["a", "init_kind"])
    auc_caption = (
        "Area under each curve (mean test weighted F1 over the common label range, %), "
        "function − random paired by seed: mean difference, 95 % t interval, paired t-test "
        "and Wilcoxon; p-values not corrected for the number of functions."
    )
    reach_caption = (
        f"Labels needed to reach test weighted F1 = {target * 100:.1f} % (random's mean at "
        "its last round): mean and 95 % t CI over the runs that reach it (reached / runs)."
    )
    auc = _percent(auc, ("mean", "low", "high")).set_index(["acquisition", "init_kind"])
    reach = reach.set_index(["acquisition", "init_kind"])
    sections = [
        Section("Label efficiency", caption, files),
        Section(
            "Area under the curve",
            "Mean AUC per function (%, 95 % t CI).",
            tables.write_table(auc, out, "al_auc", "AUC per function", 2),
            auc,
            2,
        ),
        Section(
            "AUC against random",
            auc_caption,
            tables.write_table(tests, out, "al_auc_vs_random", auc_caption, 2),
            tests,
            2,
        ),
        Section(
            "Labels to reach an F1",
            reach_caption,
            tables.write_table(reach, out, "al_labels_to_reach", reach_caption, 1),
            reach,
            1,
        ),
    ]
    if log and parent.get("run_id"):
        from uslearn.paths import default_tracking_uri
        from uslearn.study.tracking import log_summary, metric_key

        summary = {
            f"al_auc/{metric_key(f'{a} {i}')}": row["mean"] / 100 for (a, i), row in auc.iterrows()
        }
        summary.update(
            {
                f"al_auc_vs_random/{metric_key(f'{a} {i}')}": row["mean_diff"] / 100
                for (a, i), row in tests.iterrows()
            }
        )
        log_summary(tracking_uri or default_tracking_uri(), parent["run_id"], summary)
    return sections
