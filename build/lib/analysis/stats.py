"""Uncertainty over seeds: confidence intervals per arm and paired tests between arms.

Seeds pair runs across arms: seed s of LSD and seed s of PICA share the initialisation and, for
label fractions, the same labelled subset, so differences are taken per seed (paired t-test and
Wilcoxon signed-rank, scipy.stats) rather than between two independent groups.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from uslearn.errors import UserError
from uslearn.metrics import confidence_interval

METRIC = "test/f1_weighted"
_AT_INIT_AND_FRACTION = ("init_kind", "label_fraction")
# (name, arm column, arm a, arm b, grouping columns): a − b is reported within each group.
COMPARISONS = (
    ("LSD vs PICA", "strategy", "lsd", "pica", ("lam",)),
    # Beyond the paper: IIC (no λ) against each paper method, paired by seed alone.
    ("IIC vs LSD", "strategy", "iic", "lsd", ()),
    ("IIC vs PICA", "strategy", "iic", "pica", ()),
    ("Two-Head vs One-Head", "strategy", "fixmatch_two", "fixmatch_one", _AT_INIT_AND_FRACTION),
    # Fig. 6 right: semi-supervised against supervised at the same init and label fraction.
    ("Two-Head vs supervised", "strategy", "fixmatch_two", "supervised", _AT_INIT_AND_FRACTION),
    ("One-Head vs supervised", "strategy", "fixmatch_one", "supervised", _AT_INIT_AND_FRACTION),
    ("DC vs ImageNet init", "init_kind", "clustering", "imagenet", ("strategy", "label_fraction")),
    ("DC vs random init", "init_kind", "clustering", "random", ("strategy", "label_fraction")),
    (
        "Early stopping: steps vs epochs",
        "early_stopping",
        "steps",
        "epochs",
        ("strategy", "init_kind", "label_fraction"),
    ),
)


def method_text(method: str, level: float = 0.95, n_boot: int = 10000) -> str:
    """Return how an interval was computed, in words for a figure or caption."""
    pct = f"{level * 100:g} %"
    if method == "t":
        return f"mean and {pct} CI (Student t over seeds)"
    if method == "bootstrap":
        return f"mean and {pct} CI (percentile bootstrap over seeds, {n_boot:,} resamples)"
    raise UserError(f"unknown interval method '{method}'; expected 't' or 'bootstrap'")


def summarize(
    frame: pd.DataFrame,
    by: list[str] | tuple[str, ...],
    metric: str = METRIC,
    level: float = 0.95,
    method: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """Return mean and confidence interval of ``metric`` per group of ``by``.

    Intervals come from ``uslearn.metrics.confidence_interval``; a group with a single run has
    no interval (low and high are NaN).

    Returns:
        Columns ``*by, n, mean, low, high`` with one row per group, sorted by ``by``.
    """
    method_text(method, level, n_boot)
    rows = []
    for key, group in frame.groupby(list(by), sort=True, dropna=False):
        values = group[metric].dropna().to_numpy(dtype=float)
        key = key if isinstance(key, tuple) else (key,)
        if len(values) >= 2:
            mean, low, high = confidence_interval(
                values, level=level, method=method, n_boot=n_boot, seed=seed
            )
        else:
            mean, low, high = (
                (float(values.mean()) if len(values) else math.nan),
                math.nan,
                math.nan,
            )
        rows.append((*key, len(values), float(mean), float(low), float(high)))
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "low", "high"])


def paired_test(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> dict:
    """Return the paired comparison of ``a`` and ``b`` (same length, pair i = seed i).

    Returns:
        ``n``, ``mean_diff`` (mean of a − b), ``sd_diff``, ``t``, ``p_t`` (paired t-test),
        ``w``, ``p_w`` (two-sided Wilcoxon signed-rank, exact when scipy can), ``d_z``
        (Cohen's d for paired data: mean_diff / sd_diff), ``r_rb`` (matched-pairs rank-biserial
        correlation) and ``note``, which says when too few pairs make a test meaningless.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise UserError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diff = a - b
    n = len(diff)
    out = dict(n=n, mean_diff=float(diff.mean()) if n else math.nan, sd_diff=math.nan)
    out |= dict(t=math.nan, p_t=math.nan, w=math.nan, p_w=math.nan, d_z=math.nan, r_rb=math.nan)
    notes = []
    if n < 2:
        out["note"] = f"{n} paired seed(s): no test is possible"
        return out
    out["sd_diff"] = float(diff.std(ddof=1))
    # Differences equal up to rounding (0.7 − 0.6 vs 0.6 − 0.5) would give an absurd t.
    if out["sd_diff"] <= 1e-12 * max(1.0, abs(out["mean_diff"])):
        notes.append("all differences are equal: the t statistic is undefined")
    else:
        t = stats.ttest_rel(a, b)
        out |= dict(
            t=float(t.statistic), p_t=float(t.pvalue), d_z=out["mean_diff"] / out["sd_diff"]
        )
    nonzero = diff[diff != 0]
    if len(nonzero):
        w = stats.wilcoxon(a, b)
        ranks = stats.rankdata(np.abs(nonzero))
        plus, minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
        out |= dict(
            w=float(w.statistic), p_w=float(w.pvalue), r_rb=float((plus - minus) / ranks.sum())
        )
    else:
        notes.append("all differences are zero: no Wilcoxon test")
    # With n pairs the exact two-sided Wilcoxon p-value cannot go below 2 / 2**n.
    floor = 2.0 / 2**n
    if floor > alpha:
        notes.append(
            f"{n} pairs: the smallest possible Wilcoxon p is {floor:.3g} > {alpha:g}, "
            "so it cannot show a difference; the t-test has little power"
        )
    out["note"] = "; ".join(notes)
    return out


def paired_comparison(
    frame: pd.DataFrame,
    arm: str,
    a: str,
    b: str,
    metric: str = METRIC,
    by: tuple[str, ...] = (),
    pair_on: str = "seed",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Return one paired comparison ``a`` − ``b`` of ``metric`` per group of ``by``.

    Args:
        frame: runs from ``analysis.runs.load``.
        arm: the column that tells the arms apart (e.g. ``strategy``).
        a, b: the two values of ``arm`` compared (a − b).
        by: columns within which runs are compared (e.g. ``("lam",)``); absent ones are ignored.
        pair_on: the column that pairs a run of ``a`` with one of ``b``.

    Returns:
        Columns ``*by, a, b, mean_a, mean_b`` and those of ``paired_test``; groups where only
        one arm ran are left out.

    Raises:
        UserError: if two runs of the same arm and group share a ``pair_on`` value.
    """
    by = tuple(c for c in by if c in frame and frame[c].notna().any())
    runs = frame[frame[arm].isin([a, b])]
    dup = runs.duplicated([*by, arm, pair_on], keep=False)
    if dup.any():
        first = runs[dup].iloc[0]
        where = ", ".join(f"{c}={first[c]}" for c in (*by, arm, pair_on))
        raise UserError(f"{int(dup.sum())} runs share {where}: cannot pair them by {pair_on}")
    rows = []
    groups = runs.groupby(list(by), sort=True, dropna=False) if by else [((), runs)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = group.pivot(index=pair_on, columns=arm, values=metric)
        if a not in wide or b not in wide:
            continue
        wide = wide[[a, b]].dropna()
        result = paired_test(wide[a].to_numpy(), wide[b].to_numpy(), alpha)
        rows.append(
            dict(zip(by, key), a=a, b=b, mean_a=wide[a].mean(), mean_b=wide[b].mean(), **result)
        )
    return pd.DataFrame(rows)


def standard_comparisons(
    frame: pd.DataFrame, metric: str = METRIC, skipped: list[str] | None = None
) -> pd.DataFrame:
    """Return every comparison of ``COMPARISONS`` that the runs allow, stacked.

    Args:
        skipped: if given, receives one line per comparison whose arms ran but whose runs
            cannot be paired (e.g. two LSD runs with the same λ and seed but different α).

    Returns:
        The rows of ``paired_comparison`` with a ``comparison`` column naming the contrast and
        a ``group`` column describing the group in words (e.g. ``lam=2``); empty if none apply.
    """
    parts = []
    for name, arm, a, b, by in COMPARISONS:
        if arm not in frame or not {a, b} <= set(frame[arm].dropna()):
            continue
        try:
            table = paired_comparison(frame, arm, a, b, metric=metric, by=by)
        except UserError as err:
            if skipped is None:
                raise
            skipped.append(f"{name}: {err}")
            continue
        if table.empty:
            continue
        keys = [c for c in by if c in table]
        table.insert(0, "group", table[keys].apply(_describe, axis=1) if keys else "all runs")
        table.insert(0, "comparison", name)
        parts.append(table.drop(columns=keys))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _describe(row: pd.Series) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def spread(cell_means: np.ndarray) -> np.ndarray:
    """Return the spread of cell means across a swept parameter: their standard deviation.

    Args:
        cell_means: (..., V) means of V cells (one per value of the parameter).

    Returns:
        (...,) the sample standard deviation over the last axis (ddof = 1).
    """
    return np.std(cell_means, axis=-1, ddof=1)


def spread_bootstrap(
    values: np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Return the spread across a parameter per method, their difference, and bootstrap CIs.

    The spread of method m is the standard deviation over the V parameter values of its cell
    means (a cell mean is the mean over seeds). Seeds are resampled with replacement, the same
    draw for every cell of every method (seed s pairs runs across cells: same initialisation
    and data), and the spreads recomputed: percentile intervals of the spreads and of the
    difference (method 0 − method 1), by ``scipy.stats.bootstrap``. Seed noise alone gives cell
    means a spread of about sqrt(mean within-cell variance / S): ``noise_floor``.

    Args:
        values: (M, V, S) metric of M methods × V parameter values × S seeds (no NaN).

    Returns:
        ``spread``, ``low``, ``high``, ``noise_floor``: (M,) arrays; ``diff``, ``diff_low``,
        ``diff_high``: scalars (as 0-d arrays) of method 0 − method 1 when M >= 2, else NaN.

    Raises:
        UserError: fewer than 2 seeds or 2 parameter values, or a missing value.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 3 or values.shape[1] < 2 or values.shape[2] < 2:
        raise UserError(
            f"the spread over a parameter needs (methods, >= 2 values, >= 2 seeds), got "
            f"{values.shape}"
        )
    if not np.isfinite(values).all():
        raise UserError("the spread over a parameter needs every cell × seed to have a value")
    n_methods, _, n_seeds = values.shape

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        # index: (..., S) resampled seed indices; returns (M + 1, ...) spreads and difference.
        picked = values[:, :, index.astype(int)]  # (M, V, ..., S)
        spreads = spread(np.moveaxis(picked.mean(axis=-1), 1, -1))  # (M, ...)
        diff = spreads[0] - spreads[1] if n_methods >= 2 else np.full(spreads.shape[1:], np.nan)
        return np.concatenate([spreads, diff[None]], axis=0)

    point = statistic(np.arange(n_seeds))
    boot = stats.bootstrap(
        (np.arange(n_seeds),),
        statistic,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = boot.confidence_interval
    floor = np.sqrt(values.var(axis=2, ddof=1).mean(axis=1) / n_seeds)
    return dict(
        spread=point[:n_methods],
        low=np.asarray(low)[:n_methods],
        high=np.asarray(high)[:n_methods],
        noise_floor=floor,
        diff=point[n_methods],
        diff_low=np.asarray(low)[n_methods],
        diff_high=np.asarray(high)[n_methods],
    )


def sensitivity_spread(
    frame: pd.DataFrame,
    param: str = "lam",
    methods: tuple[str, str] = ("pica", "lsd"),
    metric: str = METRIC,
    level: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Return "is method 0 more sensitive to ``param`` than method 1?" as a table, and notes.

    The paper's claim "PICA is very sensitive to λ, LSD is stable" (Fig. 5) as a statistic:
    per method, the standard deviation across λ of the cell means over seeds, with a bootstrap
    CI over seeds (``spread_bootstrap``), and the difference of the two spreads with its CI.
    Only seeds that every cell of both methods ran are used.

    Returns:
        One row per method and one for the difference (``method 0 − method 1``), columns
        ``row, n_values, n_seeds, spread, low, high, noise_floor``, in the metric's unit; and
        lines saying which seeds or cells were dropped.

    Raises:
        UserError: the runs lack a method, the parameter, or two shared seeds and values.
    """
    notes: list[str] = []
    for col in ("strategy", param, "seed", metric):
        if col not in frame:
            raise UserError(f"the spread over {param} needs the column '{col}'")
    runs = frame[frame["strategy"].isin(methods)].dropna(subset=[param, metric])
    missing = [m for m in methods if m not in set(runs["strategy"])]
    if missing:
        raise UserError(f"the spread over {param} needs runs of {', '.join(missing)}")
    cells = runs.pivot_table(
        index=["strategy", param], columns="seed", values=metric, aggfunc="mean"
    )
    shared_values = sorted(set.intersection(*(set(cells.loc[m].index) for m in methods)), key=float)
    cells = cells.loc[[(m, v) for m in methods for v in shared_values]]
    complete = cells.columns[cells.notna().all(axis=0)]
    if len(complete) < len(cells.columns):
        dropped = sorted(set(cells.columns) - set(complete))
        notes.append(f"seeds {dropped} left out of the spread: not run in every cell")
    values = cells[complete].to_numpy(dtype=float).reshape(len(methods), len(shared_values), -1)
    result = spread_bootstrap(values, level=level, n_boot=n_boot, seed=seed)
    rows = [
        dict(
            row=m,
            spread=result["spread"][i],
            low=result["low"][i],
            high=result["high"][i],
            noise_floor=result["noise_floor"][i],
        )
        for i, m in enumerate(methods)
    ]
    rows.append(
        dict(
            row=f"{methods[0]} − {methods[1]}",
            spread=float(result["diff"]),
            low=float(result["diff_low"]),
            high=float(result["diff_high"]),
            noise_floor=np.nan,
        )
    )
    table = pd.DataFrame(rows)
    table.insert(1, "n_values", len(shared_values))
    table.insert(2, "n_seeds", len(complete))
    return table, notes
