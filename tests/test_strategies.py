"""Every strategy trains through the shared loop and returns the contract's metrics."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch

from uslearn.config import ConfigError
from uslearn.data.dataset import CLASSES
from uslearn.strategies import STRATEGY_NAMES, entry, resolved_config, run
from uslearn.strategies.loop import NonFiniteLossError

# Tiny but complete, for any registered strategy: 32 px, small batches from every pool, an
# evaluation every 2 steps, and a short run in the strategy's own unit.
FAST = {"image_size": 32, "batch_exams": 4, "max_images_per_exam": 4, "seed": 0, "device": "cpu"}
SHORT = {"epochs": 1, "steps": 4}
# What some strategies log besides the loss (a strategy not named here is checked generically).
LOGS = {
    "pica": {"loss_ce", "loss_prior"},
    "lsd": {"loss_ce", "loss_prior"},
    "fixmatch_one": {"loss_sup", "loss_unsup", "mask_rate"},
    "fixmatch_two": {"loss_sup", "loss_unsup", "mask_rate"},
}
CONTRACT_METRICS = [
    "test/f1_weighted",
    "test/precision_weighted",
    "test/recall_weighted",
    "val/f1_weighted",
    "best_step",
] + [f"test/{m}/{c}" for m in ("f1", "precision", "recall", "support") for c in CLASSES]


def config(strategy: str, **overrides) -> dict:
    """Return a short config of ``strategy`` built from its registry entry alone."""
    spec = entry(strategy)
    batches = {draw.exams_key: FAST["batch_exams"] for draw in spec.draws}
    # A minimum run length (fine-tuning's step rule) would stretch these short runs.
    minimum = {"min_steps": 0} if "min_steps" in {f.name for f in fields(spec.config)} else {}
    return {
        "strategy": strategy,
        **FAST,
        **batches,
        **minimum,
        "eval_every": 2,
        spec.unit: SHORT[spec.unit],
    } | overrides


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_trains_and_reports_contract_metrics(strategy, tiny_phantom, tmp_path):
    reports = []
    final = run(
        config(strategy), tiny_phantom, report=lambda m, c: reports.append((m, c)), out_dir=tmp_path
    )
    for name in CONTRACT_METRICS:
        assert name in final and math.isfinite(final[name]), name
    assert 0.0 <= final["test/f1_weighted"] <= 1.0
    assert reports, "report was never called"
    metrics, checkpoint = reports[-1]
    assert (
        math.isfinite(metrics["train/loss"])
        and "val/f1_weighted" in metrics
        and "train/img_per_s" in metrics
    )
    assert (tmp_path / "checkpoint" / "checkpoint.pt").is_file() and checkpoint == str(
        tmp_path / "checkpoint"
    )
    for name in ("metrics.json", "config.json", "thresholds.json", "per_class.csv", "best.pt"):
        assert (tmp_path / name).is_file(), name
    assert list(pd.read_csv(tmp_path / "per_class.csv", index_col="class").index) == [
        *CLASSES,
        "weighted",
    ]
    thresholds = json.loads((tmp_path / "thresholds.json").read_text(), parse_constant=pytest.fail)
    assert set(thresholds) == set(CLASSES)
    assert {f"train/{name}" for name in LOGS.get(strategy, ())} <= set(metrics)
    assert json.loads((tmp_path / "config.json").read_text())["family"] == entry(strategy).family
    if entry(strategy).family == "clustering":
        assert {"test/nmi", "test/ari"} <= set(final)
        table = pd.read_csv(tmp_path / "cluster_labels.csv", index_col="cluster")
        values = table[list(CLASSES)].to_numpy()
        assert ((values >= 0) & (values <= 1)).all()
    if "train/mask_rate" in metrics:
        assert 0.0 <= metrics["train/mask_rate"] <= 1.0


def test_same_config_and_seed_give_identical_metrics(tiny_phantom, tmp_path):
    first = run(config("supervised", epochs=1), tiny_phantom, out_dir=tmp_path / "a")
    second = run(config("supervised", epochs=1), tiny_phantom, out_dir=tmp_path / "b")
    assert first == second


@pytest.mark.parametrize(
    "cfg",
    [
        config("fixmatch_two", steps=6, eval_every=2),
        config("fixmatch_one", steps=4, eval_every=2, ema_decay=0.9),  # the average resumes too
    ],
    ids=["plain", "with-ema"],
)
def test_resumed_run_matches_an_uninterrupted_one(cfg, tiny_phantom, tmp_path):
    uninterrupted = run(cfg, tiny_phantom, out_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def crash_after_first_evaluation(metrics, checkpoint):
        if metrics["step"] >= 2:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, tiny_phantom, report=crash_after_first_evaluation, out_dir=tmp_path / "killed")
    resumed = run(
        cfg,
        tiny_phantom,
        out_dir=tmp_path / "resumed",
        resume_from=tmp_path / "killed" / "checkpoint",
    )
    assert resumed == pytest.approx(uninterrupted, abs=1e-6)


def test_unknown_config_key_is_rejected_before_training(tiny_phantom):
    with pytest.raises(ConfigError, match="unknown key"):
        run({**config("supervised"), "tau": 0.9}, tiny_phantom)
    with pytest.raises(ConfigError, match="lam"):
        run(config("pica", lam=-1.0), tiny_phantom)
    with pytest.raises(ConfigError, match=r"strategy='nope': expected one of \['pica'"):
        run({"strategy": "nope"}, tiny_phantom)


def test_resolved_config_fills_defaults_init_kind_and_family():
    resolved = resolved_config({"strategy": "lsd", "init": "runs/x/best.pt"})
    assert (
        resolved["lam"] == 2.0
        and resolved["alpha"] == 1.05
        and resolved["init_kind"] == "clustering"
        and resolved["family"] == "clustering"
    )


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_run_logs_only_the_fields_its_strategy_reads(strategy):
    resolved = resolved_config({"strategy": strategy})
    own = set(entry(strategy).config.__dataclass_fields__)
    assert entry(strategy).unit in resolved and own <= set(resolved)
    assert ("alpha" in resolved) == (strategy == "lsd")  # PICA never reads α
    assert ("patience" in resolved) == (strategy == "supervised")
    assert ("epochs" in resolved) != ("steps" in resolved)


def test_sampled_rows_walk_through_epochs_and_resume_mid_epoch():
    from uslearn.data.sampler import ExamBatchSampler
    from uslearn.strategies.common import sampled_rows

    exam_ids = np.repeat([f"e{k}" for k in range(4)], 2)
    sampler = ExamBatchSampler(exam_ids, np.arange(8), exams_per_batch=2, seed=0)
    expected = []
    for epoch in range(3):  # 3 epochs of 2 batches
        sampler.set_epoch(epoch)
        expected.extend(sampler)
    stream = sampled_rows(sampler, start_step=0)
    assert all(np.array_equal(next(stream), e) for e in expected)
    resumed = sampled_rows(sampler, start_step=3)  # epoch 1, second batch
    assert all(np.array_equal(next(resumed), e) for e in expected[3:])


def test_non_finite_loss_stops_with_step_and_parts(tiny_phantom, tmp_path, monkeypatch):
    from uslearn import losses

    real_bce = losses.multilabel_bce
    calls = {"n": 0}

    def bce_that_explodes_at_step_3(logits, targets):
        calls["n"] += 1
        value = real_bce(logits, targets)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(losses, "multilabel_bce", bce_that_explodes_at_step_3)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss=nan"):
        run(config("supervised", epochs=3), tiny_phantom, out_dir=tmp_path)


def test_clustering_checkpoint_initialises_fine_tuning(tiny_phantom, tmp_path):
    run(config("lsd"), tiny_phantom, out_dir=tmp_path / "lsd")
    final = run(
        config("supervised", epochs=1, init=str(tmp_path / "lsd" / "best.pt")),
        tiny_phantom,
        out_dir=tmp_path / "ft",
    )
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["init_kind"] == "clustering" and math.isfinite(final["test/f1_weighted"])
    lsd_backbone = torch.load(tmp_path / "lsd" / "best.pt", weights_only=False)["model"]
    assert any(k.startswith("backbone") or "conv1" in k for k in lsd_backbone)


def test_label_fraction_uses_fewer_labelled_images(tiny_phantom, tmp_path):
    from uslearn.data.dataset import Dataset
    from uslearn.data.splits import labelled_subset

    data = Dataset.open(tiny_phantom)
    small, full = labelled_subset(data, 0.5, 0), labelled_subset(data, 1.0, 0)
    assert 0 < len(small) < len(full) and np.isin(small, full).all()


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tiny_phantom, tmp_path):
    from uslearn.strategies.distributed import run_local_ddp

    cfg = config("supervised", epochs=2, max_images_per_exam=0)
    ranks = run_local_ddp(
        {**cfg, "batch_exams": 2, "workers": 2},
        tiny_phantom,
        world_size=2,
        out_dir=tmp_path / "ddp",
    )
    single = run({**cfg, "batch_exams": 4}, tiny_phantom, out_dir=tmp_path / "single")
    assert ranks[0] == ranks[1], "ranks must agree on every metric"
    # Same exams per global step; per-rank BatchNorm statistics and augmentation draws differ,
    # so the match is close, not exact.
    assert ranks[0]["test/f1_weighted"] == pytest.approx(single["test/f1_weighted"], abs=0.15)
    assert (
        ranks[0]["best_step"] == single["best_step"]
        or abs(ranks[0]["val/f1_weighted"] - single["val/f1_weighted"]) < 0.15
    )


def test_unlabelled_frames_in_val_and_test_are_left_out_of_evaluation(tiny_phantom, tmp_path):
    import shutil

    from uslearn.data.dataset import Dataset

    copy = tmp_path / "with_unlabelled_frames"
    shutil.copytree(tiny_phantom, copy)
    manifest = pd.read_parquet(copy / "manifest.parquet")
    for split in ("val", "test", "labelled"):
        rows = np.flatnonzero(manifest["split"].to_numpy() == split)[:3]
        manifest.loc[rows, list(CLASSES)] = -1
    manifest.to_parquet(copy / "manifest.parquet", index=False)
    data = Dataset.open(copy)
    final = run(config("supervised", epochs=1), data, out_dir=tmp_path / "out")
    test_rows = data.indices("test")
    labelled_test = int((data.labels[test_rows] >= 0).all(axis=1).sum())
    supports = sum(final[f"test/support/{c}"] for c in CLASSES)
    assert supports == data.labels[test_rows][data.labels[test_rows][:, 0] >= 0].sum()
    assert labelled_test == len(test_rows) - 3 and math.isfinite(final["test/f1_weighted"])


def evaluations(history_file) -> list[float]:
    """Return the steps at which a run validated (from its history.json)."""
    return [h["step"] for h in json.loads(history_file.read_text())]


def test_fine_tuning_stops_after_patience_steps_but_never_before_min_steps(
    tiny_phantom, tmp_path, monkeypatch
):
    from uslearn.strategies.supervised import SupervisedStrategy

    # A validation score that never improves after the first evaluation.
    monkeypatch.setattr(SupervisedStrategy, "validate", lambda self, model: 0.5)
    cfg = config("supervised", epochs=50, eval_every=0, eval_steps=2, patience_steps=4)
    final = run({**cfg, "min_steps": 12}, tiny_phantom, out_dir=tmp_path / "min")
    # Patience (4 steps = 2 evaluations) runs out at step 6; the minimum holds it to step 12.
    assert evaluations(tmp_path / "min" / "history.json") == [2, 4, 6, 8, 10, 12]
    assert final["best_step"] == 2
    run({**cfg, "min_steps": 0}, tiny_phantom, out_dir=tmp_path / "no_min")
    assert evaluations(tmp_path / "no_min" / "history.json") == [2, 4, 6]


def test_the_papers_epoch_rule_validates_once_per_epoch_for_patience_epochs(
    tiny_phantom, tmp_path, monkeypatch
):
    from uslearn.strategies.supervised import SupervisedStrategy

    monkeypatch.setattr(SupervisedStrategy, "validate", lambda self, model: 0.5)
    cfg = config("supervised", epochs=50, eval_every=0, early_stopping="epochs", patience=2)
    run({**cfg, "min_steps": 500}, tiny_phantom, out_dir=tmp_path)  # min_steps: step rule only
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]


def test_a_step_rule_run_lasts_min_steps_even_when_its_epochs_are_fewer(tiny_phantom, tmp_path):
    final = run(
        config("supervised", epochs=1, eval_every=0, eval_steps=3, min_steps=7, label_fraction=0.5),
        tiny_phantom,
        out_dir=tmp_path,
    )
    assert evaluations(tmp_path / "history.json") == [3, 6, 7]
    assert math.isfinite(final["test/f1_weighted"])


def test_fixmatch_validates_every_eval_steps_and_takes_mu_unlabelled_exams_per_labelled_one(
    tiny_phantom, tmp_path
):
    from uslearn.data.dataset import Dataset
    from uslearn.strategies.context import make_context
    from uslearn.strategies.fixmatch import build
    from uslearn.strategies.registry import parse_config

    cfg = config("fixmatch_two", steps=7, eval_every=0, eval_steps=3)
    run(cfg, tiny_phantom, out_dir=tmp_path)
    assert evaluations(tmp_path / "history.json") == [3, 6, 7]
    train, own = parse_config({**cfg, "mu": 2.0})
    strategy = build(train, own, Dataset.open(tiny_phantom), make_context(train))
    assert strategy.unlabelled_sampler.exams_per_batch == 2 * train.batch_exams
    train, own = parse_config(cfg)  # mu = 0: the paper's exam count
    strategy = build(train, own, Dataset.open(tiny_phantom), make_context(train))
    assert strategy.unlabelled_sampler.exams_per_batch == own.unlabelled_exams


def test_with_an_ema_the_validated_and_kept_weights_are_the_average(
    tiny_phantom, tmp_path, monkeypatch
):
    from uslearn.strategies.fixmatch import FixMatchStrategy

    scores = iter([0.1, 0.2])  # the last evaluation is the best: best.pt = the final average
    monkeypatch.setattr(FixMatchStrategy, "validate", lambda self, model: next(scores))
    run(
        config("fixmatch_two", steps=4, eval_every=2, ema_decay=0.5), tiny_phantom, out_dir=tmp_path
    )
    checkpoint = torch.load(tmp_path / "checkpoint" / "checkpoint.pt", weights_only=False)
    kept = torch.load(tmp_path / "best.pt", weights_only=False)["model"]
    average = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items()}
    for name, value in kept.items():
        torch.testing.assert_close(value, average[name], rtol=0, atol=0)
    raw = checkpoint["model"]
    assert any(not torch.equal(raw[k], kept[k]) for k in raw if raw[k].is_floating_point())


def test_algorithm_1_uses_the_labelled_or_the_validation_images_as_its_development_set(
    tiny_phantom,
):
    from uslearn.data.dataset import Dataset
    from uslearn.strategies.clustering import build
    from uslearn.strategies.context import make_context
    from uslearn.strategies.registry import parse_config

    data = Dataset.open(tiny_phantom)
    for source, role in (("labelled", "labelled"), ("val", "val")):
        train, own = parse_config(config("lsd", cluster_labels_from=source))
        strategy = build(train, own, data, make_context(train))
        np.testing.assert_array_equal(strategy.development, getattr(strategy.rows, role))
    assert parse_config(config("pica"))[1].cluster_labels_from == "labelled"  # the default
    with pytest.raises(ConfigError, match="cluster_labels_from"):
        parse_config(config("pica", cluster_labels_from="test"))
