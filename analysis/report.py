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

import base64
import datetime as dt
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures, gallery, stats, tables, tsne
from analysis.runs import load, parent_run
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.strategies.registry import hyperparameters, param_label

log = get_logger(__name__)

# Held at their most frequent value within a strategy while another one is plotted.
HELD = (*hyperparameters(), "label_fraction", "init_kind")
SWEEP_TITLES = {"lam": "Fig. 5: sensitivity to λ over seeds"}
DATASET_PARAMS = ("dataset", "data", "data_dir", "dataset_path")


@dataclass
class Section:
    """A figure or table of the report: its title, caption, files and (for tables) its frame."""

    title: str
    caption: str
    files: list[Path]
    table: pd.DataFrame | None = None
    decimals: int = 2


@dataclass
class Report:
    """What ``build_report`` wrote: the HTML file, its sections and notes on what was skipped."""

    html: Path
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
        UserError: the study has no runs, or a metric a figure or table needs is missing.
    """
    stats.method_text(method, level)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = load(study, tracking_uri=tracking_uri, invocation=invocation)
    if "strategy" not in frame:
        raise UserError(f"study '{study}': its runs have no 'strategy' param (docs/CONTRACTS.md)")
    parent = parent_run(frame, tracking_uri)
    report = Report(html=out / "report.html")
    add = report.sections.append
    for param in hyperparameters():
        if param not in frame:
            continue
        swept = frame.groupby("strategy")[param].nunique()
        runs = frame[frame["strategy"].isin(swept[swept > 1].index)]
        if runs.empty:
            continue
        runs, held = hold_fixed(runs, param)
        title = SWEEP_TITLES.get(param, f"Sensitivity to {param_label(param)}")
        fig = figures.sweep_boxplot(runs, param)
        stem = "fig5_lambda" if param == "lam" else f"fig_{param}_sensitivity"
        caption = "Boxes: quartiles over seeds; points: one run each. " + "; ".join(held)
        add(Section(title, caption, figures.save(fig, out, stem)))
    panels = figures.fig6_panels(frame)
    if panels:
        panels = [(t, hold_fixed(r, "label_fraction", "init_kind")[0]) for t, r in panels]
        fig = figures.fraction_plot(panels, method=method, level=level)
        caption = f"{stats.method_text(method, level)}; colour = method, line style = init."
        add(
            Section(
                "Fig. 6: weighted F1 against label fraction",
                caption,
                figures.save(fig, out, "fig6_label_fraction"),
            )
        )
    clustering = frame["family"] == "clustering"
    if clustering.any():
        table = tables.table1(frame)
        _, which = tables.clustering_selection(frame)
        caption = (
            "Table 1: deep-clustering methods on the test set (%), best (per cell) and mean "
            f"over trials; {which}."
        )
        add(Section("Table 1", caption, tables.write_table(table, out, "table1", caption), table))
    if (~clustering).any():
        candidates = frame[~clustering]
        _, metric = select_best(candidates)
        table, run = tables.table2(candidates, select_by=metric)
        caption = f"Table 2: best model by {metric}: {tables.describe_run(run)}."
        add(Section("Table 2", caption, tables.write_table(table, out, "table2", caption), table))
    summary = _summary(frame, method, level)
    caption = f"Every arm of the study: {stats.method_text(method, level)} of the test weighted F1."
    add(
        Section(
            "Summary", caption, tables.write_table(summary, out, "summary", caption, 4), summary, 4
        )
    )
    paired = stats.standard_comparisons(frame, skipped=report.notes)
    if not paired.empty:
        caption = (
            "Paired comparisons across seeds (a − b of test weighted F1): paired t-test, "
            "Wilcoxon signed-rank, Cohen's d_z and rank-biserial r; p-values are not corrected "
            "for the number of comparisons."
        )
        paired = paired.set_index(["comparison", "group"])
        add(
            Section(
                "Paired comparisons",
                caption,
                tables.write_table(paired, out, "paired", caption, 4),
                paired,
                4,
            )
        )
    _tsne_section(frame, out, checkpoint, dataset, tracking_uri, parent, report)
    _fig7_section(frame, out, dataset, tracking_uri, parent, report)
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


def _summary(frame: pd.DataFrame, method: str, level: float) -> pd.DataFrame:
    """Return mean and CI of test weighted F1 per arm (strategy, init and every swept param)."""
    keys = [
        "strategy",
        *[
            c
            for c in ("init_kind", "label_fraction", *hyperparameters())
            if c in frame and frame[c].nunique() > 1
        ],
    ]
    # A param that some strategies lack (λ for supervised runs) reads "–"; text keys also keep
    # groupby from comparing floats with strings.
    data = frame.assign(**{c: frame[c].map(_key_text) for c in keys})
    return stats.summarize(data, keys, method=method, level=level).set_index(keys)


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


def render_html(
    study: str, frame: pd.DataFrame, parent: dict, report: Report, tracking_uri: str | None
) -> str:
    """Return the self-contained HTML report: run facts, config, figures (base64 PNG), tables."""
    esc = html.escape
    shas = sorted(set(frame["git_sha"].dropna())) or [parent["tags"].get("git_sha", "unknown")]
    prints = (
        sorted(set(frame["dataset_fingerprint"].dropna())) if "dataset_fingerprint" in frame else []
    )
    facts = {
        "study": study,
        "parent run": parent["run_id"],
        "trials": f"{len(frame)} finished child runs",
        "git sha": ", ".join(shas),
        "uslearn version": parent["tags"].get("uslearn_version", "unknown"),
        "dataset fingerprint": ", ".join(prints) or "not logged",
        "tracking URI": tracking_uri or "default",
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(shas) > 1 or len(prints) > 1:
        report.notes.append(
            "runs differ in git sha or dataset fingerprint: check they are comparable"
        )
    body = [f"<h1>Study report: {esc(study)}</h1>", _dl(facts), _runs_link(parent, tracking_uri)]
    body += [
        "<h2>Study configuration (parent run params)</h2>",
        _dl(parent["params"]) or "<p>none logged</p>",
    ]
    constant = {
        c: frame[c].iloc[0] for c in _param_columns(frame) if frame[c].nunique(dropna=False) == 1
    }
    tags = {k: v for k, v in parent["tags"].items() if not k.startswith("mlflow.")}
    body += ["<h2>Study tags</h2>", _dl(tags)]
    body += ["<h2>Settings shared by every trial</h2>", _dl(constant)]
    for section in report.sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        png = next((p for p in section.files if p.suffix == ".png"), None)
        if png is not None:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(section.title)}" src="data:image/png;base64,{data}">'
            )
            body.append(f"<figcaption>{esc(section.caption)}</figcaption></figure>")
        if section.table is not None:
            cells = tables.formatted(section.table, section.decimals)
            body.append(f"<p>{esc(section.caption)}</p>" + cells.to_html(na_rep=""))
        files = ", ".join(p.name for p in section.files)
        body.append(f"<p class='files'>files: {esc(files)}</p>")
    if report.notes:
        body += ["<h2>Notes</h2><ul>", *[f"<li>{esc(n)}</li>" for n in report.notes], "</ul>"]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}dt{font-weight:bold}"
        "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}.files{color:#777;font-size:12px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(study)} report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _param_columns(frame: pd.DataFrame) -> list[str]:
    ids = {
        "run_id",
        "run_name",
        "parent_run_id",
        "experiment_id",
        "status",
        "start_time",
        "artifact_uri",
    }
    return [c for c in frame.columns if c not in ids and "/" not in c and c != "best_step"]


def _runs_link(parent: dict, tracking_uri: str | None) -> str:
    """Return a paragraph that opens the study's runs in the MLflow UI (the runs table)."""
    from uslearn.paths import default_tracking_uri
    from uslearn.study.tracking_uri import runs_table_url, ui_hint

    uri = tracking_uri or default_tracking_uri()
    experiment = parent.get("experiment_id")
    if experiment is None:
        return ""
    if uri.startswith(("http://", "https://")):
        url = html.escape(runs_table_url(uri, experiment))
        return f'<p>MLflow: <a href="{url}">the runs table</a></p>'
    return f"<p>MLflow: {html.escape(ui_hint(uri, experiment))}</p>"


def _dl(items: dict) -> str:
    rows = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()
    )
    return f"<dl>{rows}</dl>" if rows else ""
