"""analysis.tsne: features of a clustering checkpoint, their embedding and the Fig. 2 figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_analysis_factories import log_study, new_store, scratch_dir, trial_metrics

from analysis.figures import save
from analysis.report import build_report
from analysis.tsne import combination_names, embed, extract_features, tsne_figure
from uslearn.data.dataset import CLASSES
from uslearn.data.writer import DatasetWriter
from uslearn.errors import UserError

N_TEST, SIZE = 16, 32


def write_dataset(out, n_test=N_TEST, size=SIZE):
    """Write a dataset of 4 labelled and ``n_test`` test images with known label combinations."""
    rng = np.random.default_rng(0)
    n = 4 + n_test
    labels = np.zeros((n, len(CLASSES)), dtype=np.int8)
    labels[np.arange(n), np.arange(n) % 3] = 1  # liver, gallbladder or other
    labels[::4, CLASSES.index("kidney")] = 1  # and kidney on every fourth image
    manifest = pd.DataFrame(labels, columns=list(CLASSES))
    manifest.insert(0, "split", ["labelled"] * 4 + ["test"] * n_test)
    manifest.insert(0, "exam_id", [f"e{i // 2}" for i in range(n)])
    manifest.insert(0, "patient_id", [f"p{i // 2}" for i in range(n)])
    manifest.insert(0, "image_id", [f"i{i}" for i in range(n)])
    with DatasetWriter(out, size=size, capacity=n, source="test") as writer:
        writer.write(0, rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        return writer.commit(manifest), labels[4:]


def write_checkpoint(path, k=3, **extra):
    """Save a random clustering ``Network`` the way the training loop saves ``best.pt``."""
    import torch

    from uslearn.models import Network

    torch.manual_seed(0)
    torch.save({"model": Network({"cluster": k}).state_dict(), **extra}, path)
    return path


def test_combination_names_spell_out_each_label_set():
    labels = np.array([[1, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0] * 7, [-1] * 7])
    names = combination_names(labels).tolist()
    assert names == ["liver + kidney", "other", "none", "unlabelled"]


@pytest.fixture(scope="module")
def assets():
    """A dataset, its test labels and a clustering checkpoint, made once for this module."""
    root = scratch_dir()
    dataset, labels = write_dataset(root / "ds")
    return root, dataset, labels, write_checkpoint(root / "best.pt", config={"image_size": 32})


@pytest.mark.slow
def test_features_come_from_the_checkpoint_and_the_figure_is_written(assets):
    root, dataset, labels, ckpt = assets
    feats, clusters, got = extract_features(ckpt, dataset)
    assert feats.shape == (N_TEST, 512) and np.isfinite(feats).all()
    assert clusters.shape == (N_TEST,) and set(clusters) <= {0, 1, 2}
    assert np.array_equal(got, labels)
    points = embed(feats)
    assert points.shape == (N_TEST, 2) and np.isfinite(points).all()
    png, pdf = save(tsne_figure(points, clusters, got), root, "tsne")
    assert png.stat().st_size > 20_000 and pdf.stat().st_size > 5_000


def test_checkpoint_without_a_cluster_head_is_refused():
    import torch

    root = scratch_dir()
    state = {
        "heads.multilabel.weight": torch.zeros(7, 512),
        "heads.multilabel.bias": torch.zeros(7),
    }
    torch.save({"model": state}, root / "sup.pt")
    with pytest.raises(UserError, match=r"heads \['multilabel'\], no 'cluster' head"):
        extract_features(root / "sup.pt", root)


@pytest.mark.slow
def test_report_draws_the_tsne_from_the_best_clustering_runs_artifact(assets):
    client, uri, exp = new_store("tsne")
    root, dataset, _, ckpt = assets
    rng = np.random.default_rng(1)
    trials = [
        (dict(strategy="lsd", lam=2.0, seed=s), trial_metrics(rng, 0.5 + 0.1 * s)) for s in (0, 1)
    ]
    parent = log_study(client, exp, "tsne_study", trials)
    client.log_param(parent, "dataset", str(dataset))
    runs = client.search_runs([exp], "tags.mlflow.parentRunId != ''")
    best = max(runs, key=lambda r: r.data.metrics["val/f1_weighted"]).info.run_id
    client.log_artifact(best, str(ckpt))
    report = build_report("tsne_study", root / "report", uri, log_to_mlflow=False)
    section = next(s for s in report.sections if s.title.startswith("Fig. 2"))
    assert best in section.caption
    assert (root / "report" / "fig2_tsne.png").stat().st_size > 20_000
    assert "fig2_tsne.png" in report.html.read_text()
