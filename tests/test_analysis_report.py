"""analysis tables, figures and ``uslearn report`` on a real MLflow sqlite store."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_analysis_factories import SUPPORTS, lambda_trials, shared_store

from analysis.report import build_report
from analysis.runs import load
from analysis.tables import table1, table2, to_markdown
from uslearn.cli import main
from uslearn.data.dataset import CLASSES
from uslearn.errors import UserError

EXPECTED = {
    "lambda_study": {"fig5_lambda", "table1", "summary", "paired", "lambda_spread"},
    "fraction_study": {"fig6_label_fraction", "table2", "summary", "paired"},
    "sweep_study": {"fig_alpha_sensitivity", "fig_tau_sensitivity", "table1", "table2", "summary"},
}


@pytest.fixture(scope="module")
def store():
    return shared_store()


@pytest.fixture(scope="module")
def reports(store, tmp_path_factory):
    uri, _ = store
    out = tmp_path_factory.mktemp("reports")
    return {study: (build_report(study, out / study, uri), out / study) for study in EXPECTED}


def assert_real_png(path, min_colours=50):
    """The PNG opens, is figure-sized and is not a blank canvas."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert min(pixels.shape[:2]) > 400
    packed = pixels[..., 0].astype(np.int32) << 16 | pixels[..., 1].astype(np.int32) << 8
    assert len(np.unique(packed | pixels[..., 2])) >= min_colours
    assert (pixels < 100).any(), "no dark pixels: no text or axes drawn"


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(EXPECTED))
def test_report_writes_every_applicable_figure_and_table(reports, study):
    report, out = reports[study]
    stems = {p.stem for section in report.sections for p in section.files}
    assert stems == EXPECTED[study]
    for stem in stems:
        if stem.startswith("fig"):
            assert_real_png(out / f"{stem}.png")
            assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        else:
            for suffix in (".csv", ".md", ".tex"):
                assert (out / f"{stem}{suffix}").stat().st_size > 100


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(EXPECTED))
def test_html_report_embeds_every_figure_and_names_sha_and_fingerprint(reports, study):
    report, out = reports[study]
    page = report.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(out.glob("*.png"))
    assert len(embedded) == len(pngs) > 0
    for png in pngs:
        assert base64.b64encode(png.read_bytes()).decode() in embedded
    assert "deadbeef" in page and "abc123" in page and "n_trials" in page
    assert "<img" in page and 'src="http' not in page  # self-contained


@pytest.mark.slow
def test_report_is_logged_to_the_parent_run(store, reports):
    from mlflow.tracking import MlflowClient

    uri, parents = store
    names = {a.path for a in MlflowClient(uri).list_artifacts(parents["lambda_study"], "report")}
    assert {"report/report.html", "report/fig5_lambda.png", "report/table1.tex"} <= names


def test_table1_cells_are_best_and_mean_over_trials_of_the_logged_values(store):
    uri, _ = store
    table = table1(load("lambda_study", tracking_uri=uri))
    logged = [(p, m) for p, m in lambda_trials() if p["lam"] == 2.0]
    for strategy, name in (("lsd", "LSD"), ("pica", "PICA")):
        values = [m["test/recall/pancreas"] for p, m in logged if p["strategy"] == strategy]
        assert table.loc[("Recall", name), ("Pancreas", "Best")] == pytest.approx(100 * max(values))
        assert table.loc[("Recall", name), ("Pancreas", "Mean")] == pytest.approx(
            100 * np.mean(values)
        )
    n_labels = table.loc[("n_labels", ""), (slice(None), "Best")].to_numpy()
    assert n_labels.tolist() == [SUPPORTS[c] for c in CLASSES] + [sum(SUPPORTS.values())]
    markdown = to_markdown(table)
    assert "| n_labels | 55 |  | 11 |" in markdown and "Gallbladder Best" in markdown


def test_table1_best_run_takes_one_trial_whole(store):
    uri, _ = store
    frame = load("lambda_study", tracking_uri=uri)
    table = table1(frame, best="run")
    lsd = frame[(frame["strategy"] == "lsd") & (frame["lam"] == 2.0)]
    top = lsd.loc[lsd["test/f1_weighted"].idxmax()]
    assert table.loc[("Precision", "LSD"), ("Liver", "Best")] == pytest.approx(
        100 * top["test/precision/liver"]
    )


def test_table2_is_the_run_with_the_best_validation_f1(store):
    uri, _ = store
    frame = load("fraction_study", tracking_uri=uri)
    table, run = table2(frame)
    assert run["run_id"] == frame.loc[frame["val/f1_weighted"].idxmax(), "run_id"]
    assert table.loc["F1-score", "weighted avg"] == pytest.approx(100 * run["test/f1_weighted"])
    assert table.loc["n_labels", "Bladder"] == SUPPORTS["bladder"]


def test_table1_without_clustering_runs_is_a_clear_error(store):
    uri, _ = store
    with pytest.raises(UserError, match="Table 1 needs runs of a clustering method"):
        table1(load("fraction_study", tracking_uri=uri))


def test_report_command_fails_clearly_for_a_study_without_runs(store, tmp_path, capsys):
    uri, _ = store
    args = ["report", "--study", "ghost", "--tracking-uri", uri, "--out", str(tmp_path / "report")]
    assert main(args) == 2
    assert "study 'ghost' has no runs" in capsys.readouterr().err


@pytest.mark.slow
def test_report_command_writes_the_html_with_a_bootstrap_interval(store, tmp_path, capsys):
    uri, _ = store
    args = ["report", "--study", "sweep_study", "--mlflow", uri, "--out", str(tmp_path / "report")]
    assert main([*args, "--interval", "bootstrap", "--no-log"]) == 0
    assert str(tmp_path / "report" / "report.html") in capsys.readouterr().out
    assert "percentile bootstrap" in (tmp_path / "report" / "report.html").read_text()


def test_hold_fixed_keeps_the_most_frequent_value_of_other_swept_params_per_strategy():
    import pandas as pd

    from analysis.report import hold_fixed

    frame = pd.DataFrame(
        dict(
            strategy=["lsd"] * 5 + ["pica"] * 2,
            lam=[0.5, 2.0, 0.5, 2.0, 2.0, 1.0, 1.0],
            alpha=[1.1, 1.1, 1.1, 1.1, 1.5, 1.05, 1.05],
        )
    )
    kept, held = hold_fixed(frame, "lam")
    assert kept["alpha"].tolist() == [1.1] * 4 + [1.05] * 2
    assert held == ["LSD: alpha held at 1.1"]


def test_table1_has_one_row_per_clustering_method_of_the_registry():
    from test_analysis_factories import trial_metrics

    from uslearn.strategies import entry, names

    rng = np.random.default_rng(2)
    methods = names("clustering")
    rows = [
        {"run_id": f"r{i}", "strategy": s, "family": "clustering", "seed": i // len(methods)}
        | trial_metrics(rng, 0.5)
        for i, s in enumerate(methods * 2)
    ]
    table = table1(pd.DataFrame(rows))
    for metric in ("F1-score", "Precision", "Recall"):
        assert [m for row, m in table.index if row == metric] == [entry(s).label for s in methods]


@pytest.mark.slow
def test_summary_sorts_lambda_as_numbers_and_reports_percent(reports):
    _, out = reports["lambda_study"]
    summary = pd.read_csv(out / "summary.csv")
    lams = [float(row.split()[1]) for row in summary["row"] if row.startswith("pica")]
    assert lams == [0.5, 2.0, 10.0]
    assert summary["mean"].between(1, 100).all()  # percent, like every table of the report


@pytest.mark.slow
def test_the_lambda_spread_section_compares_pica_and_lsd(reports):
    report, out = reports["lambda_study"]
    table = pd.read_csv(out / "lambda_spread.csv", index_col="row")
    assert list(table.index) == ["PICA", "LSD", "PICA − LSD"]
    # The factory's PICA grows with log λ and LSD does not: PICA's spread is the larger.
    assert table.loc["PICA", "spread"] > table.loc["LSD", "spread"]
    assert table.loc["PICA − LSD", "spread"] == pytest.approx(
        table.loc["PICA", "spread"] - table.loc["LSD", "spread"]
    )


def test_a_missing_metric_leaves_out_only_what_needs_it_and_the_report_says_why(tmp_path):
    from test_analysis_factories import log_study, new_store

    client, uri, experiment = new_store()
    trials = lambda_trials(seeds=(0, 1, 2), lams=(0.5, 2.0))
    for _, metrics in trials[:2]:
        del metrics["test/f1/pancreas"]  # two runs lack one per-class metric
    del trials[-1][1]["test/f1_weighted"]  # and one the headline metric
    log_study(client, experiment, "holes", trials)
    report = build_report("holes", tmp_path, uri, log_to_mlflow=False)
    stems = {p.stem for section in report.sections for p in section.files}
    assert {"fig5_lambda", "summary", "paired", "lambda_spread"} <= stems
    assert "table1" not in stems
    assert any(n.startswith("Table 1 left out:") and "test/f1/pancreas" in n for n in report.notes)
    assert any("1 of 12 runs have no test/f1_weighted" in n for n in report.notes)
    page = report.html.read_text()
    assert "Table 1 left out" in page
    assert not re.search(r">\s*nan\s*<", page, flags=re.IGNORECASE)


def test_settings_shared_by_every_trial_list_params_not_metrics(tmp_path):
    """epoch, step and k are metrics without a '/': they are no settings (issue 21)."""
    import mlflow
    from test_analysis_factories import log_study

    from analysis.report_html import Report, render_html
    from analysis.runs import load

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e")
    metrics = {"epoch": 2.0, "step": 8.0, "k": 12.0, "val/f1_weighted": 0.5}
    trials = [(dict(strategy="lsd", lam=1.0, alpha=1.05, seed=s), metrics) for s in (0, 1)]
    log_study(client, experiment, "shared", trials)
    frame = load("shared", tracking_uri=uri, require=())
    parent = {"run_id": "p", "params": {}, "tags": {}}
    page = render_html("shared", frame, parent, Report(html=tmp_path / "r.html"), uri)
    shared = page.split("Settings shared by every trial</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<dt>lam</dt>" in shared and "<dt>alpha</dt>" in shared, shared
    for metric in ("epoch", "step", "k"):
        assert f"<dt>{metric}</dt>" not in shared, shared
