"""analysis.runs: the frame read from a real MLflow sqlite store equals what was logged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_factories import (
    fraction_trials,
    lambda_trials,
    log_study,
    new_store,
    shared_store,
    sweep_trials,
)

from analysis.runs import RunsError, load, per_class, tidy, typed_param
from uslearn.data.dataset import CLASSES


@pytest.fixture(scope="module")
def store():
    return shared_store()


def test_loaded_frame_equals_logged_params_and_metrics(store):
    uri, parents = store
    frame = load("fraction_study", tracking_uri=uri)
    logged = fraction_trials()
    assert len(frame) == len(logged)
    assert set(frame["parent_run_id"]) == {parents["fraction_study"]}
    assert frame["seed"].dtype == "Int64" and frame["label_fraction"].dtype == float
    key = ["strategy", "init", "label_fraction", "seed"]
    by_key = frame.set_index(key, drop=False)
    for params, metrics in logged:
        row = by_key.loc[tuple(params[k] for k in key)]
        for name, value in params.items():
            assert row[name] == value, name
        for name, value in metrics.items():
            assert row[name] == pytest.approx(value, abs=1e-12), name


def test_load_reads_the_latest_invocation_unless_asked_for_all(store):
    uri, parents = store
    latest = load("lambda_study", tracking_uri=uri)
    assert len(latest) == len(lambda_trials())
    assert set(latest["parent_run_id"]) == {parents["lambda_study"]}
    every = load("lambda_study", tracking_uri=uri, invocation="all")
    assert len(every) == len(lambda_trials()) + 1
    old = load("lambda_study", tracking_uri=uri, invocation=parents["lambda_study_old"])
    assert old["lam"].tolist() == [1.0] and old["seed"].tolist() == [9]


def test_experiment_alone_reads_every_child_run(store):
    uri, _ = store
    frame = load(experiment="uslearn", tracking_uri=uri)
    assert len(frame) == len(lambda_trials()) + 1 + len(fraction_trials()) + len(sweep_trials())


def test_study_without_runs_is_a_clear_error(store):
    uri, _ = store
    with pytest.raises(RunsError, match="study 'no_such_study' has no runs"):
        load("no_such_study", tracking_uri=uri)
    with pytest.raises(RunsError, match="no trial"):
        load("empty_study", tracking_uri=uri)
    with pytest.raises(RunsError, match="no experiment named 'nope'"):
        load("lambda_study", experiment="nope", tracking_uri=uri)


def test_missing_metric_names_the_metric_and_the_runs(store):
    uri, _ = store
    with pytest.raises(RunsError, match="no run logged the metric 'test/nmi'"):
        load("lambda_study", tracking_uri=uri, require=("test/nmi",))


def test_metric_missing_from_some_runs_lists_them():
    client, uri, exp = new_store()
    good = (dict(strategy="lsd", seed=0), {"test/f1_weighted": 0.5})
    bad = (dict(strategy="lsd", seed=1), {"val/f1_weighted": 0.5})
    log_study(client, exp, "s", [good, bad])
    with pytest.raises(RunsError, match=r"'test/f1_weighted' is missing from 1 of 2 runs"):
        load("s", tracking_uri=uri)


def test_failed_runs_are_left_out():
    client, uri, exp = new_store()
    parent = log_study(client, exp, "s", [(dict(seed=0), {"test/f1_weighted": 0.5})])
    failed = client.create_run(exp, tags={"study": "s", "mlflow.parentRunId": parent})
    client.set_terminated(failed.info.run_id, "FAILED")
    assert len(load("s", tracking_uri=uri)) == 1
    assert len(load("s", tracking_uri=uri, statuses=("FINISHED", "FAILED"), require=())) == 2


def test_per_class_long_form_matches_the_wide_columns(store):
    uri, _ = store
    frame = load("lambda_study", tracking_uri=uri)
    long = per_class(frame)
    assert list(long["class"].cat.categories) == list(CLASSES)
    assert len(long) == len(frame) * len(CLASSES) * 4
    row = long[(long["metric"] == "f1") & (long["class"] == "spleen")].set_index("run_id")
    wide = frame.set_index("run_id")["test/f1/spleen"]
    assert np.allclose(row.loc[wide.index, "value"], wide)


def test_typed_params_convert_numbers_missing_values_and_booleans():
    assert typed_param("seed", pd.Series(["1", "None", "3"])).tolist() == [1, pd.NA, 3]
    lam = typed_param("lam", pd.Series(["0.5", "2"]))
    assert lam.dtype == float and lam.tolist() == [0.5, 2.0]
    assert typed_param("amp", pd.Series(["True", "False"])).tolist() == [True, False]
    assert typed_param("init", pd.Series(["imagenet", "runs/a.pt"])).tolist()[1] == "runs/a.pt"
    assert typed_param("width", pd.Series(["8", "16"])).tolist() == [8, 16]
    with pytest.raises(RunsError, match="param 'lr' should be a number but is 'fast'"):
        typed_param("lr", pd.Series(["0.1", "fast"]))


def test_tidy_takes_hundreds_of_metrics_without_fragmenting_the_frame():
    # make demo printed pandas' PerformanceWarning once per study: one insert per metric.
    import warnings

    raw = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "experiment_id": ["1", "1"],
            "status": ["FINISHED"] * 2,
            "start_time": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "artifact_uri": ["x", "y"],
            "params.seed": ["0", "1"],
            **{f"metrics.val/m{k}": [k, k + 0.5] for k in range(300)},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        frame = tidy(raw)
    assert frame["val/m299"].tolist() == [299.0, 299.5] and frame["seed"].tolist() == [0, 1]
