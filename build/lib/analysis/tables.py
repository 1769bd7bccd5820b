"""Table 1 (the deep-clustering methods, per class, best and mean over trials) and Table 2 (the
best model, per class), as frames and as CSV, Markdown and LaTeX files.

Table 1's rows are the runs of the ``clustering`` family (the paper's PICA and LSD, and any
other clustering method in the registry), in registry order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import STRATEGY_NAMES, arm_name
from analysis.runs import require_metrics
from uslearn.data.dataset import CLASSES
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.strategies import registry

log = get_logger(__name__)

ROW_METRICS = {"F1-score": "f1", "Precision": "precision", "Recall": "recall"}
WEIGHTED = "weighted avg"
N_LABELS = "n_labels"
_LATEX_SYMBOLS = {"λ": r"$\lambda$", "α": r"$\alpha$", "τ": r"$\tau$", "%": r"\%"}


def class_name(cls: str) -> str:
    """Return a class's display name (``gallbladder`` → ``Gallbladder``)."""
    return cls.capitalize()


def _columns(metric: str) -> list[str]:
    """Return the per-class columns of ``metric`` in class order, then the weighted one."""
    return [f"test/{metric}/{c}" for c in CLASSES] + [f"test/{metric}_weighted"]


def _modal(values: pd.Series, prefer: float) -> float:
    """Return the most frequent value; ties go to the one closest to ``prefer``."""
    counts = values.value_counts()
    best = counts[counts == counts.max()].index
    return float(min(best, key=lambda v: (abs(v - prefer), v)))


def clustering_selection(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Return the clustering runs Table 1 compares and a caption fragment saying which.

    Each swept knob of a clustering method (λ, LSD's α, ...) is held at its most frequent
    value among the runs that have it (ties: the one nearest the config's default), so each
    method's trials differ only by seed.

    Raises:
        UserError: if there is no run of a clustering method.
    """
    family = frame["family"] if "family" in frame else pd.Series(index=frame.index, dtype=object)
    runs = frame[family == "clustering"]
    if runs.empty:
        raise UserError(
            f"Table 1 needs runs of a clustering method ({', '.join(registry.names('clustering'))});"
            " this study has none"
        )
    parts = []
    for param in registry.hyperparameters():
        if param not in runs or runs[param].isna().all():
            continue
        has = runs[param].notna()
        value = _modal(runs.loc[has, param], prefer=registry.param_default(param))
        runs = runs[~has | (runs[param] == value)]
        owners = sorted(set(runs.loc[has, "strategy"]), key=list(STRATEGY_NAMES).index)
        parts.append(f"{param_symbol(param)} = {value:g} ({', '.join(map(arm_name, owners))})")
    counts = runs.groupby("strategy").size()
    parts.append(", ".join(f"{arm_name(s)}: {counts[s]} trials" for s in _ordered(counts.index)))
    return runs, "; ".join(parts)


def param_symbol(param: str) -> str:
    """Return the symbol a config field is written with (``lam`` → ``λ``)."""
    return registry.param_label(param).split(" (")[0]


def _ordered(strategies) -> list[str]:
    """Return ``strategies`` in registry order (unregistered ones last, by name)."""
    known = [s for s in STRATEGY_NAMES if s in set(strategies)]
    return known + sorted(set(strategies) - set(known))


def n_labels(frame: pd.DataFrame) -> pd.Series | None:
    """Return the test-set label count per class and in total, from ``test/support/<class>``.

    Returns:
        A series indexed by class then ``weighted avg`` (the total), or None when no run logged
        supports. Runs that disagree (different test sets) are reported and the most common
        count is used.
    """
    cols = [f"test/support/{c}" for c in CLASSES]
    if not set(cols) <= set(frame):
        log.warning("no test/support/<class> metrics: the n_labels row is left out")
        return None
    supports = frame[cols].dropna()
    if supports.empty:
        return None
    if (supports.nunique() > 1).any():
        log.warning("runs report different test supports: they used different test sets")
    counts = supports.mode().iloc[0].astype(int)
    return pd.Series([*counts, counts.sum()], index=[*CLASSES, WEIGHTED])


def table1(frame: pd.DataFrame, best: str = "cell", scale: float = 100.0) -> pd.DataFrame:
    """Return Table 1: per-class F1/precision/recall of each clustering method, best and mean.

    Args:
        frame: runs from ``analysis.runs.load`` (the clustering runs are selected with
            ``clustering_selection``).
        best: ``"cell"`` takes each cell's maximum over trials (the paper's Table 1, where a
            class's best F1, precision and recall can come from different trials); ``"run"``
            takes the whole row from the trial with the best test weighted F1.
        scale: multiplier of the scores (100 gives percent, as in the paper).

    Returns:
        Rows (metric, method) plus an ``n_labels`` row; columns (class or ``weighted avg``,
        ``Best``/``Mean``). Methods come in registry order.

    Raises:
        UserError: if there is no clustering run or a per-class metric is missing.
    """
    if best not in ("cell", "run"):
        raise UserError(f"best must be 'cell' or 'run', not '{best}'")
    runs, _ = clustering_selection(frame)
    names = [class_name(c) for c in CLASSES] + [WEIGHTED]
    columns = pd.MultiIndex.from_product([names, ["Best", "Mean"]])
    rows, index = [], []
    for label, metric in ROW_METRICS.items():
        require_metrics(runs, _columns(metric), "Table 1")
        for strategy in _ordered(runs["strategy"]):
            arm = runs[runs["strategy"] == strategy]
            values = arm[_columns(metric)].to_numpy(dtype=float) * scale
            if best == "cell":
                top = values.max(axis=0)
            else:
                top = values[int(np.argmax(arm["test/f1_weighted"].to_numpy()))]
            rows.append(np.column_stack([top, values.mean(axis=0)]).ravel())
            index.append((label, arm_name(strategy)))
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index), columns=columns)
    counts = n_labels(runs)
    if counts is not None:
        table.loc[(N_LABELS, ""), :] = np.ravel([[n, np.nan] for n in counts])
    return table


def table2(
    frame: pd.DataFrame, select_by: str = "val/f1_weighted", scale: float = 100.0
) -> tuple[pd.DataFrame, pd.Series]:
    """Return Table 2 (the best run's per-class F1, precision, recall, n_labels) and that run.

    The best run is the one with the highest ``select_by`` among runs that logged per-class
    metrics; selecting on validation keeps the test set out of model selection. Scores are
    multiplied by ``scale`` (100: percent, the unit of every table of the report).

    Raises:
        UserError: if ``select_by`` or a per-class metric of the chosen run is missing.
    """
    runs = frame.dropna(subset=[c for c in _columns("f1") if c in frame])
    require_metrics(frame, [select_by], "Table 2")
    if runs.empty or not set(_columns("f1")) <= set(frame):
        raise UserError("Table 2 needs runs that logged test/f1/<class> for every class")
    run = runs.loc[runs[select_by].idxmax()]
    names = [class_name(c) for c in CLASSES] + [WEIGHTED]
    rows = {}
    for label, metric in ROW_METRICS.items():
        require_metrics(run.to_frame().T, _columns(metric), "Table 2")
        rows[label] = run[_columns(metric)].to_numpy(dtype=float) * scale
    table = pd.DataFrame.from_dict(rows, orient="index", columns=names)
    counts = n_labels(run.to_frame().T)
    if counts is not None:
        table.loc[N_LABELS] = counts.to_numpy(dtype=float)
    return table, run


def describe_run(run: pd.Series) -> str:
    """Return a one-line description of a run: arm, fraction, seed, id."""
    parts = [arm_name(run.get("strategy", "?"), run.get("init_kind"))]
    if pd.notna(run.get("label_fraction", np.nan)):
        parts.append(f"{run['label_fraction'] * 100:g} % labels")
    if pd.notna(run.get("seed", np.nan)):
        parts.append(f"seed {run['seed']}")
    return ", ".join(parts) + f" (run {run['run_id']})"


def _cell(value: object, decimals: int) -> str:
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return ""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return str(value)
    return f"{float(value):.{decimals}f}"


def _flat(labels: object) -> str:
    return " ".join(str(p) for p in labels if p != "") if isinstance(labels, tuple) else str(labels)


def formatted(
    table: pd.DataFrame, decimals: int, integer_rows: tuple[str, ...] = (N_LABELS,)
) -> pd.DataFrame:
    """Return ``table`` as strings: ``decimals`` places; integer columns and ``integer_rows``
    (counts such as ``n_labels``) as integers; missing values as empty strings."""
    whole = [(key[0] if isinstance(key, tuple) else key) in integer_rows for key in table.index]
    cells = []
    for i in range(len(table)):
        row = []
        for j in range(table.shape[1]):
            integral = whole[i] or pd.api.types.is_integer_dtype(table.dtypes.iloc[j])
            row.append(_cell(table.iloc[i, j], 0 if integral else decimals))
        cells.append(row)
    return pd.DataFrame(cells, index=table.index, columns=table.columns, dtype=object)


def to_markdown(table: pd.DataFrame, decimals: int = 2) -> str:
    """Return ``table`` as a GitHub Markdown table.

    Named index levels get a column each; unnamed ones (Table 1's metric and loss) share the
    first column, and multi-level column labels are joined by spaces.
    """
    cells = formatted(table, decimals)
    named = any(name is not None for name in table.index.names)
    index_header = [str(n) for n in table.index.names] if named else [""]
    header = [*index_header, *[_flat(c) for c in cells.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in cells.iterrows():
        parts = [_cell(k, 4) for k in (key if isinstance(key, tuple) else (key,))]
        lines.append("| " + " | ".join([*(parts if named else [_flat(key)]), *row]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str, label: str, decimals: int = 2) -> str:
    """Return ``table`` as a LaTeX ``table`` environment (booktabs rules, multicolumn headers)."""
    cells = formatted(table, decimals)
    cells.index = cells.index.map(
        lambda k: tuple(_latex(str(p)) for p in k) if isinstance(k, tuple) else _latex(str(k))
    )
    cells.columns = cells.columns.map(
        lambda k: tuple(_latex(str(p)) for p in k) if isinstance(k, tuple) else _latex(str(k))
    )
    latex = cells.to_latex(
        escape=False, multicolumn=True, multicolumn_format="c", caption=_latex(caption), label=label
    )
    return latex


def _latex(text: str) -> str:
    text = text.replace("_", r"\_")
    for symbol, command in _LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def write_table(
    table: pd.DataFrame, out_dir: str | Path, stem: str, caption: str, decimals: int = 2
) -> list[Path]:
    """Write ``table`` as ``<stem>.csv`` (full precision), ``.md`` and ``.tex``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = table.copy()
    flat.columns = [_flat(c) for c in flat.columns]
    flat.index = [_flat(k) for k in flat.index]
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.tex"]
    flat.to_csv(paths[0], index_label="row")
    paths[1].write_text(f"{caption}\n\n{to_markdown(table, decimals)}", encoding="utf-8")
    paths[2].write_text(to_latex(table, caption, f"tab:{stem}", decimals), encoding="utf-8")
    return paths
