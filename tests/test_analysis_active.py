"""Label-efficiency analysis on hand-made MLflow runs whose areas and crossings are known."""

import pytest

from analysis import active_learning
from analysis.runs import load
from uslearn.study import tracking

# (function, seed) -> F1 at 10 and 30 labels: straight lines, so the areas are the means.
CURVES = {
    ("random", 0): (0.40, 0.60),
    ("random", 1): (0.42, 0.62),
    ("coreset", 0): (0.50, 0.70),
    ("coreset", 1): (0.54, 0.74),
}


def hand_made_study(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "active_learning")
    parent = tracking.start_parent(uri, exp, "active_learning", {}, {})
    for (function, seed), (start, end) in CURVES.items():
        run = tracking.TrackedRun(
            uri,
            exp,
            f"{function} {seed}",
            {"study": "active_learning"},
            parent,
            f"{function}{seed}",
        )
        run.log_params({"strategy": "supervised", "init": "random", "seed": seed})
        run.log_params({"acquisition": function})
        for labels, f1 in ((10, start), (30, end)):
            run.log_metrics({"step": labels, "al/test_f1_weighted": f1})
        run.log_metrics({"test/f1_weighted": end, "val/f1_weighted": end}, final=True)
        run.finish("FINISHED")
    return uri


def test_areas_paired_differences_and_labels_to_reach_match_the_hand_computed_values(tmp_path):
    uri = hand_made_study(tmp_path)
    frame = load("active_learning", tracking_uri=uri, require=())
    files, tests, reach, auc, target = active_learning.write(frame, tmp_path / "out", uri)
    assert files[0].name == "fig_label_efficiency.png" and files[0].stat().st_size > 10_000
    means = auc.set_index("acquisition")["mean"]
    assert means["random"] == pytest.approx(0.51) and means["coreset"] == pytest.approx(0.62)
    (row,) = tests.to_dict("records")
    assert (row["a"], row["b"], row["n"]) == ("coreset", "random", 2)
    assert row["mean_diff"] == pytest.approx(0.11)  # diffs 0.10 and 0.12
    assert row["ci_low"] < 0.11 < row["ci_high"]
    assert target == pytest.approx(0.61)  # random's mean F1 at its last round
    by = reach.set_index("acquisition")
    # random: seed 0 never reaches 0.61, seed 1 at 10 + 0.19 / 0.2 * 20 = 29 labels;
    # coreset: 10 + 0.11 / 0.2 * 20 = 21 and 10 + 0.07 / 0.2 * 20 = 17.
    assert (by.loc["random", "reached"], by.loc["random", "runs"]) == (1, 2)
    assert by.loc["random", "mean"] == pytest.approx(29.0)
    assert by.loc["coreset", "mean"] == pytest.approx(19.0)


def test_the_report_has_the_label_efficiency_sections_and_logs_the_areas(tmp_path):
    from analysis.report import build_report

    uri = hand_made_study(tmp_path)
    report = build_report("active_learning", tmp_path / "report", uri)
    titles = [s.title for s in report.sections]
    assert {"Label efficiency", "AUC against random", "Labels to reach an F1"} <= set(titles)
    parent = load("active_learning", tracking_uri=uri, require=())["parent_run_id"].iloc[0]
    logged = tracking.client(uri).get_run(parent).data.metrics
    assert logged["al_auc_vs_random/coreset_random"] == pytest.approx(0.11)
