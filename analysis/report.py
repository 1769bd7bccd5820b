"""One study → every figure and table its runs allow, and a self-contained HTML report.

What applies is read from the runs, not from the study's name: a strategy knob (a labelled
float field of the configs) that takes several values within a strategy gets a sensitivity
plot (λ is Fig. 5), runs of the clustering family give Table 1, label fractions with two or
more arms give Fig. 6, runs of the other families (they predict labels) give Table 2, arms
sharing seeds give paired tests, a clustering checkpoint plus a dataset give the t-SNE
figure, and the best run's logged model plus the dataset give Fig. 7. Families come from the
runs' ``family`` param (``analysis.runs``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from analysis import active_learning, figures, gallery, stats, tables, tsne
from analysis.report_html import Report, Section, render_html
from analysis.runs import load, parent_run
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.strategies.registry import hyperparameters, param_label

log = get_logger(__name__)

# Held at their most frequent value within a strategy while another one is plotted.
HELD = (*hyperparameters(), "label_fraction", "init_kind")
SWEEP_TITLES = {"lam": "Fig. 5: sensitivity to λ over seeds"}
DATASET_PARAMS = ("dataset", "data", "data_dir", "dataset_path")


def hold_fixed(runs: pd.DataFrame, *vary: str) -> tuple[pd.DataFrame, list[str]]:
    """Return ``runs`` with every ``HELD`` column not in ``vary`` at one value per strategy.

    Returns:
        The kept runs and one line per held column that took several values (what was kept).
    """
    kept, held = [], []
    for strategy, group in runs.groupby("strategy", sort=False):
        for col in HELD:
            if col in vary or col not in group or group[col].nunique() < 2:
                continue
            value = group[col].value_counts().index[0]
            group = group[group[col] == value]
            held.append(f"{figures.arm_name(strategy)}: {col} held at {value}")
        kept.append(group)
    return pd.concat(kept), held


def select_best(runs: pd.DataFrame) -> tuple[pd.Series, str]:
    """Return the best run by validation weighted F1 (test weighted F1 if none) and the metric."""
    metric = "val/f1_weighted" if runs.get("val/f1_weighted", pd.Series()).notna().any() else None
    metric = metric or stats.METRIC
    return runs.loc[runs[metric].idxmax()], metric


def build_report(
    study: str,
    out_dir: str | Path,
    tracking_uri: str | None = None,
    *,
    method: str = "t",
    level: float = 0.95,
    invocation: str = "latest",
    checkpoint: str | Path | None = None,
    dataset: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Write the study's figures (PNG + PDF), tables (CSV, Markdown, LaTeX) and ``report.html``.

    Every figure and table the runs support is written; one that cannot be (a metric some
    runs lack, an arm that did not run) is left out and the report's notes say which and
    why. Scores are in percent throughout.

    Args:
        study: the study name (``study`` tag of its runs).
        out_dir: directory for every file.
        method, level: confidence interval of Fig. 6 and the summary (``"t"``/``"bootstrap"``).
        invocation: which parent run (see ``analysis.runs.load``).
        checkpoint, dataset: inputs of the t-SNE figure; by default the best clustering run's
            kept weights and the dataset path it logged, when both can be found. The
            dataset's test split also gives Fig. 7 (the best run's model on it).
        log_to_mlflow: log ``out_dir`` to the parent run as artifacts under ``report/``.

    Returns:
        The ``Report`` (HTML path, sections, notes).

    Raises:
        UserError: the study has no runs, or its runs have no strategy param.
    """
    stats.method_text(method, level)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = load(study, tracking_uri=tracking_uri, invocation=invocation, require=())
    if "strategy" not in frame:
        raise UserError(f"study '{study}': its runs have no 'strategy' param (docs/CONTRACTS.md)")
    parent = parent_run(frame, tracking_uri)
    report = Report(html=out / "report.html")
    scored = frame
    if stats.METRIC in frame:
        scored = frame.dropna(subset=[stats.METRIC])
    if len(scored) < len(frame) or stats.METRIC not in frame:
        report.notes.append(
            f"{len(frame) - len(scored) if stats.METRIC in frame else len(frame)} of "
            f"{len(frame)} runs have no {stats.METRIC}: left out of every figure and table"
        )
        if stats.METRIC not in frame:
            scored = frame.iloc[0:0]
    builders = [
        ("sensitivity figures", lambda: _sweep_sections(scored, out)),
        ("Fig. 6", lambda: _fig6_section(scored, out, method, level)),
        ("Table 1", lambda: _table1_section(scored, out)),
        ("Table 2", lambda: _table2_section(scored, out)),
        ("Summary", lambda: _summary_section(scored, out, method, level)),
        ("Paired comparisons", lambda: _paired_section(scored, out, report.notes)),
        ("Sensitivity to λ: spread", lambda: _spread_section(scored, out, level, report.notes)),
        (
            "Label efficiency",
            lambda: active_learning.sections(scored, out, tracking_uri, parent, log_to_mlflow),
        ),
    ]
    for name, build in builders:
        try:
            report.sections.extend(build())
        except UserError as err:
            report.notes.append(f"{name} left out: {err}")
    try:
        _tsne_section(frame, out, checkpoint, dataset, tracking_uri, parent, report)
    except UserError as err:
        report.notes.append(f"t-SNE (Fig. 2 right) left out: {err}")
    if not scored.empty:
        try:
            _fig7_section(scored, out, dataset, tracking_uri, parent, report)
        except UserError as err:
            report.notes.append(f"Fig. 7 left out: {err}")
    report.html.write_text(
        render_html(study, frame, parent, report, tracking_uri), encoding="utf-8"
    )
    if log_to_mlflow:
        from mlflow.tracking import MlflowClient

        from uslearn.paths import default_tracking_uri

        client = MlflowClient(tracking_uri or default_tracking_uri())
        client.log_artifacts(parent["run_id"], str(out), artifact_path="report")
    log.info("report for study '%s' written to %s", study, report.html)
    return report


def _sweep_sections(frame: pd.DataFrame, out: Path) -> list[Section]:
    """Return a box plot per strategy knob that takes several values within a strategy."""
    sections = []
    for param in hyperparameters():
        if param not in frame or frame.empty:
            continue
        swept = frame.groupby("strategy")[param].nunique()
        runs = frame[frame["strategy"].isin(swept[swept > 1].index)]
        if runs.empty:
            continue
        runs, held = hold_fixed(runs, param)
        title = SWEEP_TITLES.get(param, f"Sensitivity to {param_label(param)}")
        fig = figures.sweep_boxplot(runs, param)
        stem = "fig5_lambda" if param == "lam" else f"fig_{param}_sensitivity"
        caption = "Boxes: quartiles over seeds; points: one run each (%). " + "; ".join(held)
        sections.append(Section(title, caption, figures.save(fig, out, stem)))
    return sections


def _fig6_section(frame: pd.DataFrame, out: Path, method: str, level: float) -> list[Section]:
    """Return Fig. 6 when the runs have label fractions and two arms or fractions."""
    panels = figures.fig6_panels(frame)
    if not panels:
        return []
    panels = [(t, hold_fixed(r, "label_fraction", "init_kind")[0]) for t, r in panels]
    fig = figures.fraction_plot(panels, method=method, level=level)
    caption = f"{stats.method_text(method, level)} (%); colour = method, line style = init."
    title = "Fig. 6: weighted F1 against label fraction"
    return [Section(title, caption, figures.save(fig, out, "fig6_label_fraction"))]


def _table1_section(frame: pd.DataFrame, out: Path) -> list[Section]:
    """Return Table 1 when the study has runs of the clustering family."""
    if "family" not in frame or not (frame["family"] == "clustering").any():
        return []
    table = tables.table1(frame)
    _, which = tables.clustering_selection(frame)
    caption = (
        "Table 1: deep-clustering methods on the test set (%), best (per cell) and mean "
        f"over trials; {which}."
    )
    return [Section("Table 1", caption, tables.write_table(table, out, "table1", caption), table)]


def _table2_section(frame: pd.DataFrame, out: Path) -> list[Section]:
    """Return Table 2 (the best label-predicting run) when the study has such runs."""
    candidates = frame[frame["family"] != "clustering"] if "family" in frame else frame
    if candidates.empty:
        return []
    _, metric = select_best(candidates)
    table, run = tables.table2(candidates, select_by=metric)
    caption = f"Table 2: best model by {metric}, test set (%): {tables.describe_run(run)}."
    return [Section("Table 2", caption, tables.write_table(table, out, "table2", caption), table)]


def _summary_section(frame: pd.DataFrame, out: Path, method: str, level: float) -> list[Section]:
    """Return the mean and CI of every arm."""
    if frame.empty:
        raise UserError(f"no run has {stats.METRIC}")
    summary = _summary(frame, method, level)
    caption = (
        f"Every arm of the study: {stats.method_text(method, level)} of the test weighted F1 (%)."
    )
    files = tables.write_table(summary, out, "summary", caption, 2)
    return [Section("Summary", caption, files, summary, 2)]


def _paired_section(frame: pd.DataFrame, out: Path, notes: list[str]) -> list[Section]:
    """Return the paired comparisons the runs allow (a − b of test weighted F1, in %)."""
    paired = stats.standard_comparisons(frame, skipped=notes)
    if paired.empty:
        return []
    paired = _in_percent(paired, ("mean_a", "mean_b", "mean_diff", "sd_diff"))
    caption = (
        "Paired comparisons across seeds (a − b of test weighted F1, %): paired t-test, "
        "Wilcoxon signed-rank, Cohen's d_z and rank-biserial r; p-values are not corrected "
        "for the number of comparisons."
    )
    paired = paired.set_index(["comparison", "group"])
    files = tables.write_table(paired, out, "paired", caption, 2)
    return [Section("Paired comparisons", caption, files, paired, 2)]


def _spread_section(
    frame: pd.DataFrame, out: Path, level: float, notes: list[str]
) -> list[Section]:
    """Return the spread of PICA's and LSD's cell means across λ with bootstrap CIs (Fig. 5's
    claim as a statistic), when both swept λ over at least 2 values and 2 seeds."""
    if "lam" not in frame or not {"pica", "lsd"} <= set(frame["strategy"]):
        return []
    swept = frame[frame["strategy"].isin(["pica", "lsd"])].groupby("strategy")["lam"].nunique()
    if (swept < 2).any():
        return []
    runs, held = hold_fixed(frame[frame["strategy"].isin(["pica", "lsd"])], "lam")
    table, dropped = stats.sensitivity_spread(runs, "lam", ("pica", "lsd"), level=level)
    notes.extend(dropped)
    table = _in_percent(table, ("spread", "low", "high", "noise_floor"))
    table["row"] = table["row"].map(
        lambda r: " − ".join(figures.arm_name(p) for p in r.split(" − "))
    )
    table = table.set_index("row")
    caption = (
        "Is PICA more sensitive to λ than LSD? Spread = standard deviation across λ of each "
        f"method's cell means over seeds (test weighted F1, %); {level * 100:g} % percentile "
        "bootstrap CI over seeds (10,000 resamples, the same seeds for every cell); last row: "
        "the difference of the spreads, PICA − LSD (a CI above 0 supports the paper). "
        "noise_floor: the spread seed noise alone would give. " + "; ".join(held)
    )
    files = tables.write_table(table, out, "lambda_spread", caption, 2)
    return [Section("Sensitivity to λ: spread across λ", caption, files, table, 2)]


def _in_percent(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Return ``table`` with the score ``columns`` (fractions) multiplied by 100."""
    return table.assign(**{c: table[c] * 100.0 for c in columns if c in table})


def _summary(frame: pd.DataFrame, method: str, level: float) -> pd.DataFrame:
    """Return mean and CI (%) of test weighted F1 per arm (strategy, init, every swept param).

    Rows are sorted by the values themselves (λ 0.5, 1, 2, 5, 10), then shown as text; a
    param that some strategies lack (λ for supervised runs) reads "–".
    """
    keys = [
        "strategy",
        *[
            c
            for c in (
                "acquisition",
                "init_kind",
                "label_fraction",
                "early_stopping",
                *hyperparameters(),
            )
            if c in frame and frame[c].nunique() > 1
        ],
    ]
    data = frame.assign(**{stats.METRIC: frame[stats.METRIC] * 100.0})
    summary = stats.summarize(data, keys, method=method, level=level)
    summary = summary.assign(**{c: summary[c].map(_key_text) for c in keys})
    return summary.set_index(keys)


def _key_text(value: object) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _tsne_section(frame, out, checkpoint, dataset, tracking_uri, parent, report) -> None:
    """Add the t-SNE figure when a clustering checkpoint and a dataset are at hand.

    Defaults: the kept weights (``best.pt`` of its MLflow model) of the best clustering run
    and the dataset directory logged by the study (the parent's ``dataset`` param), when it
    exists on this machine.
    """
    from uslearn.paths import default_tracking_uri
    from uslearn.study.logged_models import run_weights

    clustering = frame[frame["family"] == "clustering"]
    if checkpoint is None and dataset is None and clustering.empty:
        return
    run = select_best(clustering)[0] if not clustering.empty else None
    dataset = dataset or _logged_dataset(parent, run)
    source = str(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None and run is not None:
            uri = tracking_uri or default_tracking_uri()
            checkpoint = run_weights(uri, run["run_id"], Path(tmp))
            source = f"{getattr(checkpoint, 'name', '')} of run {run['run_id']}"
        if checkpoint is None or dataset is None:
            report.notes.append(
                "t-SNE (Fig. 2 right) left out: no clustering checkpoint artifact or dataset "
                "directory found; pass --checkpoint and --dataset to draw it"
            )
            return
        feats, clusters, labels = tsne.extract_features(checkpoint, dataset)
    fig = tsne.tsne_figure(tsne.embed(feats), clusters, labels)
    caption = f"t-SNE of the backbone features of test images; checkpoint: {source}."
    title = "Fig. 2 (right): t-SNE of learned features"
    report.sections.append(Section(title, caption, figures.save(fig, out, "fig2_tsne")))


def _logged_dataset(parent: dict, run: pd.Series | None) -> str | None:
    """Return the dataset directory the study (or ``run``) logged, if it exists here."""
    logged = [parent["params"].get(p) for p in DATASET_PARAMS]
    logged += [run.get(p) for p in DATASET_PARAMS] if run is not None else []
    return next((d for d in logged if isinstance(d, str) and Path(d).is_dir()), None)


def _fig7_section(frame, out, dataset, tracking_uri, parent, report) -> None:
    """Add Fig. 7 (correct and incorrect test predictions) of the best run's logged model."""
    run, metric = select_best(frame)
    dataset = dataset or _logged_dataset(parent, run)
    if dataset is None:
        report.notes.append("Fig. 7 left out: no dataset directory found; pass --dataset")
        return
    try:
        files, caption = gallery.fig7_of_run(run["run_id"], tracking_uri, dataset, out)
    except UserError as err:
        report.notes.append(f"Fig. 7 left out: {err}")
        return
    caption += f" Run chosen by {metric}: {tables.describe_run(run)}."
    title = "Fig. 7: correct and incorrect test predictions of the best model"
    report.sections.append(Section(title, caption, files))
