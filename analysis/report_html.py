"""The report's pieces (``Section``, ``Report``) and the one self-contained HTML page they make.

``analysis.report.build_report`` decides what the runs allow and fills a ``Report``;
``render_html`` writes it as one file with the figures inlined (base64 PNG), so the page can be
logged to MLflow or mailed as it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import tables
from analysis.runs import METRICS_ATTR


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
        c: frame[c].iloc[0]
        for c in _param_columns(frame)
        if frame[c].nunique(dropna=False) == 1 and frame[c].notna().all()
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
    metrics = set(frame.attrs.get(METRICS_ATTR, ()))
    return [c for c in frame.columns if c not in ids | metrics and "/" not in c]


def _shown(value: object) -> str:
    """Return a value as report text: a missing one (None, NaN, "nan") as "not logged"."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "not logged"
    text = str(value)
    return "not logged" if text in ("nan", "NaN", "None", "<NA>") else text


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
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_shown(v))}</dd>" for k, v in items.items()
    )
    return f"<dl>{rows}</dl>" if rows else ""
