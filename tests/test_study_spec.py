"""Study specs, plans, resources and the dry run: pure logic, no Ray started."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from uslearn.config import ConfigError
from uslearn.errors import UserError
from uslearn.strategies import names
from uslearn.study import dryrun
from uslearn.study.resources import (
    Resources,
    concurrency,
    estimate_seconds,
    images_per_trial,
    trial_throughput,
)
from uslearn.study.runner import summarise
from uslearn.study.spec import (
    Choice,
    LogUniform,
    Search,
    StudySpec,
    make_cells,
    make_plan,
    validate,
)
from uslearn.study.trial import follow_pointer, for_tune, pointer_checkpoint, trial_name
from uslearn.study_cli import _resources, load_study, main, parse_sets

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.py"))


def make_spec(**changes) -> StudySpec:
    """Return a small two-arm grid spec, with ``changes`` applied."""
    fields = {
        "name": "probe",
        "title": "probe study",
        "fixed": {"k": 0},
        "arms": {"pica": {"strategy": "pica"}, "lsd": {"strategy": "lsd", "alpha": 1.05}},
        "grid": {"lam": [0.5, 2.0, 10.0]},
        "seeds": (0, 1, 2, 3),
    }
    fields.update(changes)
    return StudySpec(**fields)


def study_args(**changes) -> argparse.Namespace:
    """Return the Namespace a study builder receives, with defaults."""
    values = {"tracking_uri": "sqlite:////nonexistent/mlflow.db", "dc_init": None, "profile": None}
    values.update(changes)
    return argparse.Namespace(**values)


def test_grid_with_seeds_has_exactly_the_expected_cells():
    plan = make_plan(make_spec(), "paper")
    trials = plan.grid_trials()
    assert plan.num_trials() == len(trials) == 2 * 3 * 4
    names = [cell.name for cell in plan.cells]
    assert names == [f"{a} lam={v}" for a in ("pica", "lsd") for v in ("0.5", "2", "10")]
    pairs = {(c["strategy"], c["lam"], c["seed"]) for _, _, c in trials}
    assert len(pairs) == 24
    assert {s for _, s, _ in trials} == {0, 1, 2, 3}


def test_cpu_demo_profile_keeps_the_first_seeds_and_shrinks_the_images():
    plan = make_plan(make_spec(), "cpu-demo")
    assert plan.seeds == (0, 1)
    assert plan.num_trials() == 12
    assert plan.base["image_size"] == 32 and plan.base["device"] == "cpu"


def test_precedence_is_fixed_then_profile_then_cli_then_cell():
    spec = make_spec(fixed={"k": 0, "epochs": 500, "lr": 0.1, "image_size": 48})
    plan = make_plan(spec, "cpu-demo", overrides={"lr": 0.01})
    config = plan.trial_config({"cell": "lsd lam=2", "seed": 1})
    assert config["epochs"] == plan.profile.lengths["epochs"]  # the profile beats fixed
    assert config["image_size"] == plan.profile.overrides["image_size"]
    assert config["lr"] == 0.01  # the command line beats the study
    assert config["lam"] == 2.0 and config["seed"] == 1  # the cell beats everything
    cli = make_plan(spec, "cpu-demo", overrides={"epochs": 7})
    assert cli.trial_config({"cell": "lsd lam=2", "seed": 1})["epochs"] == 7


@pytest.mark.parametrize(
    ("override", "names"),
    [
        (
            {"lam": 99.0},
            r"--set lam=99.0: study 'probe' sweeps it over its grid \[0.5, 2.0, 10.0\]",
        ),
        ({"strategy": "iic"}, r"--set strategy='iic': .* sets it in its arm 'pica'"),
        ({"seed": 3}, r"--set seed=3: .*use --seeds N"),
        ({"device": "cuda"}, r"--set device='cuda': .*trial resources"),
    ],
)
def test_an_override_that_a_trial_would_ignore_is_refused(override, names):
    with pytest.raises(ConfigError, match=names):
        make_plan(make_spec(), "cpu-demo", overrides=override)


def test_a_search_dimension_cannot_be_set_and_dry_run_never_prints_a_swept_value():
    search = Search(space={"lam": LogUniform(0.1, 10.0)}, num_samples={"default": 2})
    arms = {"lsd": {"strategy": "lsd"}}
    spec = make_spec(fixed={"k": 0, "lam": 5.0}, arms=arms, grid={}, search=search)
    with pytest.raises(ConfigError, match=r"--set lam=1.0: .* searches it over LogUniform"):
        make_plan(spec, "cpu-demo", overrides={"lam": 1.0})
    text = dryrun.describe(make_plan(spec, "cpu-demo"), {"CPU": 2.0}, None, 0.0)
    shared = next(line for line in text.splitlines() if line.startswith("shared config:"))
    assert "lam=" not in shared and "k=0" in shared


def test_each_trial_gets_the_length_of_its_strategys_unit():
    arms = {"pica": {"strategy": "pica"}, "fm": {"strategy": "fixmatch_two"}}
    plan = make_plan(make_spec(fixed={}, arms=arms, grid={}), "gpu")
    validate(plan)  # neither trial gets the other's length key
    pica = plan.trial_config({"cell": "pica", "seed": 0})
    fixmatch = plan.trial_config({"cell": "fm", "seed": 0})
    assert pica["epochs"] == 30 and "steps" not in pica
    assert fixmatch["steps"] == 1500 and "epochs" not in fixmatch


def test_device_and_workers_follow_the_trial_resources():
    gpu = make_plan(make_spec(), "gpu", resources=Resources(workers=2, gpus_per_worker=1))
    assert gpu.base["device"] == "auto" and gpu.base["workers"] == 2  # cuda:$LOCAL_RANK
    cpu = make_plan(make_spec(), "gpu", resources=Resources(workers=1, gpus_per_worker=0))
    assert cpu.base["device"] == "cpu" and cpu.base["workers"] == 1


def test_validate_names_the_cell_of_an_unknown_key():
    spec = make_spec(arms={"sup": {"strategy": "supervised"}}, grid={"lam": [1.0]})
    with pytest.raises(ConfigError, match=r"cell 'sup lam=1'.*unknown key\(s\) \['k', 'lam'\]"):
        validate(make_plan(spec, "paper"))
    pica = make_spec(arms={"pica": {"strategy": "pica", "alpha": 1.05}}, grid={})
    with pytest.raises(ConfigError, match=r"cell 'pica'.*unknown key\(s\) \['alpha'\]"):
        validate(make_plan(pica, "paper"))  # PICA has no α
    nameless = make_spec(arms={"x": {}}, grid={})
    with pytest.raises(ConfigError, match="cell 'x' seed 0: no strategy given"):
        validate(make_plan(nameless, "paper"))


def test_validate_rejects_an_out_of_range_value():
    with pytest.raises(ConfigError, match="lam=-1"):
        validate(make_plan(make_spec(grid={"lam": [1.0, -1.0]}), "paper"))


def test_validate_checks_both_ends_of_a_search_range():
    search = Search(space={"tau": LogUniform(0.5, 1.5)}, num_samples={"default": 4})
    spec = make_spec(arms={"fm": {"strategy": "fixmatch_two"}}, grid={}, fixed={}, search=search)
    with pytest.raises(ConfigError, match=r"search tau=1.5"):
        validate(make_plan(spec, "paper"))


def test_a_search_runs_one_seed_and_its_sampled_values_win():
    search = Search(
        space={"lam": LogUniform(0.5, 10), "k": Choice((4, 8))}, num_samples={"paper": 9}
    )
    spec = make_spec(arms={"lsd": {"strategy": "lsd"}}, grid={}, search=search)
    plan = make_plan(spec, "paper")
    validate(plan)
    assert plan.num_trials() == 9 and plan.seeds == (0,)
    assert plan.trial_config({"lam": 3.0, "k": 8}) | {} == {
        **plan.base,
        "strategy": "lsd",
        "epochs": plan.profile.lengths["epochs"],
        "lam": 3.0,
        "k": 8,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "Bad Name"}, "lower_snake_case"),
        ({"seeds": (0, 0)}, "distinct"),
        ({"grid": {"seed": [1, 2]}}, "seeds="),
        ({"grid": {"lam": []}}, "no values"),
        ({"mode": "up"}, "max or min"),
        ({"log_models": "best_only"}, "log_models='best_only'; expected one of best, all, none"),
        ({"search": Search({"lam": LogUniform(1, 2)}, {"default": 2})}, "one arm"),
    ],
)
def test_a_malformed_spec_is_rejected_at_construction(changes, message):
    with pytest.raises(ConfigError, match=message):
        make_spec(**changes)


def test_two_cells_with_one_name_are_rejected():
    spec = make_spec(arms={"a": {"strategy": "lsd"}, "a ": {"strategy": "pica"}}, grid={})
    with pytest.raises(ConfigError, match="share a name"):
        make_cells(spec)


def test_ddp_trials_cannot_share_a_gpu():
    with pytest.raises(ConfigError, match="fractional GPUs"):
        Resources(workers=2, gpus_per_worker=0.5)
    assert Resources(workers=1, gpus_per_worker=0).mode == "in-process"
    assert Resources(workers=1, gpus_per_worker=0.5).mode == "train"
    assert Resources(workers=2, gpus_per_worker=0).mode == "train"


def test_concurrency_is_what_fits_capped_by_the_limit():
    half = Resources(workers=1, gpus_per_worker=0.5, cpus_per_worker=2)
    assert concurrency(half, {"CPU": 16, "GPU": 2}) == 4
    assert concurrency(half, {"CPU": 6, "GPU": 2}) == 3
    assert concurrency(half, {"CPU": 16, "GPU": 2}, limit=2) == 2
    # An autoscaling cluster before its GPU nodes start: Tune waits, we do not fail.
    assert concurrency(half, {"CPU": 8}) == 1
    assert concurrency(half, {"CPU": 8}, limit=3) == 3


def test_estimate_packs_the_longest_trials_first():
    assert estimate_seconds([10, 10, 10, 10], ips=1.0, parallel=2, startup_s=0) == 20
    assert estimate_seconds([30, 10, 10], ips=1.0, parallel=2, startup_s=1) == 31
    assert estimate_seconds([5], ips=1.0, parallel=4, startup_s=0) == 5


def test_throughput_scales_with_pixels_and_packing():
    full = trial_throughput("cuda", 224, 1.0, 1)
    assert trial_throughput("cuda", 224, 0.5, 1) == pytest.approx(full * 1.46 / 2)
    assert trial_throughput("cpu", 64, 0, 1) == pytest.approx(
        4 * trial_throughput("cpu", 128, 0, 1)
    )


def test_clustering_counts_two_views_of_the_unlabelled_images():
    counts = {"labelled": 100, "unlabelled": 900, "val": 300, "test": 0}
    config = {"strategy": "lsd", "epochs": 3}
    assert images_per_trial(config, counts, per_exam=10) == 2 * 900 * 3 + 3 * 100


def test_fixmatch_counts_a_labelled_batch_and_two_unlabelled_views_per_step():
    counts = {"labelled": 160, "unlabelled": 900, "val": 0, "test": 30}
    config = {"strategy": "fixmatch_two", "steps": 10, "batch_exams": 4, "unlabelled_exams": 2}
    # per exam: min(20 images, cap 16) = 16; 10 steps x (4 x 16 + 2 x 2 x 16) + test / 3
    assert images_per_trial(config, counts, per_exam=20) == 10 * (64 + 64) + 10


def test_trial_names_are_readable_and_filesystem_safe():
    plan = make_plan(make_spec(), "paper")
    assert trial_name(plan, {"cell": "lsd lam=0.5", "seed": 3}, "x") == "lsd-lam=0.5_seed=3"
    assert trial_name(plan, {"lam": 1.0}, "ab_00001") == "trial_ab_00001"


def test_tune_gets_the_summary_metrics_and_mlflow_the_per_class_ones():
    metrics = {"val/f1_weighted": 0.5, "test/f1/liver": 0.7, "step": 3.0}
    assert for_tune(metrics) == {"val/f1_weighted": 0.5, "step": 3.0}


def test_command_line_overrides_resources_and_config():
    args = argparse.Namespace(workers_per_trial=2, num_gpus_per_trial=2.0, cpus_per_worker=None)
    res = _resources(Resources(1, 0.5, 4.0), args)
    assert (res.workers, res.gpus_per_worker, res.cpus_per_worker) == (2, 1.0, 4.0)
    sets = parse_sets(["lr=1e-4", "init = imagenet", "epochs=2", "compile=true"])
    assert sets == {"lr": 1e-4, "init": "imagenet", "epochs": 2, "compile": True}
    assert type(sets["epochs"]) is int
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_sets(["lr"])


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
def test_set_refuses_a_non_finite_number(value):
    with pytest.raises(UserError, match=f"--set lam={value}: expected a finite number"):
        parse_sets([f"lam={value}"])


def test_resources_refuse_nan():
    with pytest.raises(ConfigError, match="expected GPUs >= 0 and CPUs > 0"):
        Resources(1, float("nan"), 1.0)
    with pytest.raises(ConfigError, match="expected GPUs >= 0 and CPUs > 0"):
        Resources(1, 0.0, float("nan"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
@pytest.mark.parametrize("inits_exist", [True, False], ids=["with-inits", "without-inits"])
def test_every_study_builds_and_validates_its_spec_without_starting_ray(
    path, inits_exist, monkeypatch, tmp_path
):
    weights = tmp_path / "resnet18.pth"
    if inits_exist:
        weights.write_bytes(b"")
    monkeypatch.setenv("USLEARN_IMAGENET", str(weights))
    study, file = load_study(str(path))
    assert file == str(path)
    dc_init = str(weights) if inits_exist else None
    spec = study(study_args(dc_init=dc_init)) if callable(study) else study
    assert spec.name == path.stem
    for profile in ("cpu-demo", "gpu", "paper"):
        validate(make_plan(spec, profile))
    ray = importlib.util.find_spec("ray") and __import__("ray")
    assert not ray.is_initialized()


def test_the_paper_grids_have_the_papers_sizes():
    lam, _ = load_study("lambda_sensitivity")
    assert make_plan(lam, "paper").num_trials() == 40  # {PICA, LSD} x 5 lambdas x 4 seeds
    table, _ = load_study("unsupervised_table")
    # Every clustering method (PICA, LSD, ...) at its default weights x 5 seeds.
    assert make_plan(table, "paper").num_trials() == 5 * len(names("clustering")) >= 10
    assert {"pica", "lsd"} <= set(table.arms)


def test_label_fraction_skips_missing_inits_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("USLEARN_IMAGENET", str(tmp_path / "absent.pth"))
    build, _ = load_study("label_fraction")
    spec = build(study_args())
    assert sorted(spec.arms) == ["one-head random", "supervised random", "two-head random"]
    assert any("start from random weights" in note for note in spec.notes)
    assert any("--dc-init" in note for note in spec.notes)
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.setenv("USLEARN_IMAGENET", str(tmp_path / "w.pth"))
    full = build(study_args(dc_init=str(tmp_path / "w.pth")))
    assert len(full.arms) == 5 and make_plan(full, "paper").num_trials() == 80
    # cpu-long keeps the label fractions 10 % and 100 % (and 4 seeds).
    long = make_plan(full, "cpu-long")
    assert long.num_trials() == 5 * 2 * 4
    assert {c["label_fraction"] for _, _, c in long.grid_trials()} == {0.1, 1.0}
    # The trials load exactly the weights file found here, not whatever the hub cache holds.
    assert full.arms["supervised imagenet"]["weights"] == str((tmp_path / "w.pth").resolve())


def test_the_best_init_is_deep_clustering_then_imagenet_then_random(tmp_path, monkeypatch):
    from uslearn.study.inits import best_init

    absent_store = f"sqlite:///{tmp_path / 'none.db'}"
    monkeypatch.setenv("USLEARN_IMAGENET", str(tmp_path / "absent.pth"))
    assert best_init(absent_store, None)[0] == {"init": "random"}
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.setenv("USLEARN_IMAGENET", str(tmp_path / "w.pth"))
    init, notes = best_init(absent_store, None)
    assert init == {"init": "imagenet", "weights": str((tmp_path / "w.pth").resolve())}
    (tmp_path / "dc.pt").write_bytes(b"")
    init, notes = best_init(absent_store, str(tmp_path / "dc.pt"))
    assert init == {"init": str((tmp_path / "dc.pt").resolve())} and "--dc-init" in notes[0]
    assert not (tmp_path / "none.db").exists()  # looking up nothing creates no MLflow store


def test_the_summary_keeps_the_specs_cell_order_and_counts_finished_seeds():
    frame = pd.DataFrame(
        {
            "cell": ["lam=2", "lam=2", "lam=10", "lam=10"],
            "status": ["ok", "ok", "ok", "error"],
            "val/f1_weighted": [0.5, 0.7, 0.4, float("nan")],
            "test/f1_weighted": [0.4, 0.6, 0.3, float("nan")],
        }
    )
    table = summarise(frame, "val/f1_weighted")
    assert list(table.index) == ["lam=2", "lam=10"]
    assert list(table["seeds"]) == [2, 1]
    assert table.loc["lam=2", "val/f1_weighted best"] == 0.7
    assert table.loc["lam=2", "test/f1_weighted mean"] == pytest.approx(0.5)


def test_dry_run_prints_the_trials_the_resources_and_an_estimate(tmp_path, capsys):
    lam, file = load_study("lambda_sensitivity")
    argv = ["--dry-run", "--profile", "cpu-demo", "--data", str(tmp_path / "absent")]
    assert main(lam, file, argv) == 0
    out = capsys.readouterr().out
    assert "20 trials = 10 cells x 2 seeds, no pruner" in out
    assert "pica lam=0.5" in out and "lsd lam=10" in out
    assert "run in the Tune trial process" in out
    assert "estimate: unknown until the dataset exists" in out


@pytest.mark.parametrize(
    "flag, models, kept",
    [([], 10, 10), (["--log-models", "all"], 20, 0), (["--log-models", "none"], 0, 20)],
)
def test_dry_run_prints_the_storage_the_model_policy_needs(tmp_path, capsys, flag, models, kept):
    from uslearn.study.storage import (
        MODEL_EXTRA_BYTES,
        RUN_ARTIFACT_BYTES,
        fmt_bytes,
        weights_bytes,
    )

    lam, file = load_study("lambda_sensitivity")
    argv = ["--dry-run", "--profile", "cpu-demo", "--data", str(tmp_path / "absent"), *flag]
    assert main(lam, file, argv) == 0
    out = capsys.readouterr().out
    model = weights_bytes() + MODEL_EXTRA_BYTES
    assert f"logs its model: {models} x {fmt_bytes(model)}" in out
    total = models * model + 20 * RUN_ARTIFACT_BYTES
    assert f"storage: MLflow artifacts ~{fmt_bytes(total)} ({models} model(s)" in out
    assert f"trial folders ~{fmt_bytes(kept * weights_bytes())} ({kept} best.pt" in out
    # ResNet18's 11.2 M float32 weights, whatever the image size.
    assert 44e6 < weights_bytes() < 46e6


def test_a_search_keeps_the_model_of_its_best_trial_only():
    from uslearn.study.storage import models_logged

    search = make_spec(
        arms={"lsd": {"strategy": "lsd"}},
        grid={},
        search=Search({"lam": LogUniform(0.5, 10)}, {"default": 30}),
    )
    assert models_logged(make_plan(search, "cpu-demo")) == 1
    text = dryrun.describe(make_plan(search, "cpu-demo"), {"CPU": 2}, None, 0.0)
    assert "the best trial of the search by val/f1_weighted logs its model: 1 x" in text
    assert models_logged(make_plan(make_spec(log_models="all"), "cpu-demo")) == 12
    assert models_logged(make_plan(make_spec(), "cpu-demo")) == 6


def test_an_unknown_log_models_value_is_refused_on_the_command_line(tmp_path, capsys):
    lam, file = load_study("lambda_sensitivity")
    with pytest.raises(SystemExit) as exit_:
        main(lam, file, ["--dry-run", "--log-models", "some"])
    assert exit_.value.code == 2
    assert "--log-models: invalid choice: 'some'" in capsys.readouterr().err


def test_uslearn_study_runs_a_study_file_by_name(tmp_path, capsys):
    from uslearn.cli import main as uslearn_main

    argv = ["study", "lambda_sensitivity", "--dry-run", "--profile", "paper"]
    assert uslearn_main([*argv, "--data", str(tmp_path / "absent")]) == 0
    assert "40 trials = 10 cells x 4 seeds" in capsys.readouterr().out
    assert uslearn_main(["study", "no_such_study"]) == 2
    assert "known studies" in capsys.readouterr().err


def test_dry_run_estimate_comes_from_the_dataset_and_the_throughput(tmp_path):
    plan = make_plan(make_spec(), "cpu-demo")
    counts = {"labelled": 100, "unlabelled": 900, "val": 300, "test": 300}
    text = dryrun.describe(plan, {"CPU": 2, "GPU": 0}, counts, per_exam=12.0)
    assert "cluster: 2 CPU, 0 GPU -> 2 trial(s) at a time" in text
    seconds, _ = dryrun.estimate(plan, counts, 12.0, parallel=2)
    one = images_per_trial(plan.grid_trials()[0][2], counts, 12.0) / trial_throughput(
        "cpu", 32, 0, 1
    )
    assert seconds == pytest.approx(6 * (one + 4.0))  # 12 trials, 2 at a time


def test_resume_refuses_another_profile_and_needs_an_earlier_run(tmp_path, capsys):
    lam, file = load_study("lambda_sensitivity")
    storage = tmp_path / "studies"
    argv = ["--resume", "--dry-run", "--storage", str(storage), "--profile", "cpu-demo"]
    assert main(lam, file, argv) == 2
    assert "no earlier run of study 'lambda_sensitivity'" in capsys.readouterr().err
    earlier = storage / "lambda_sensitivity" / "gpu-20260101-000000"
    earlier.mkdir(parents=True)
    state = {"profile": "gpu", "tracking_uri": "sqlite:///x.db", "data_path": str(tmp_path)}
    (earlier / "study.json").write_text(json.dumps(state))
    assert main(lam, file, argv) == 2
    assert "used profile 'gpu', not 'cpu-demo'" in capsys.readouterr().err


def test_resume_rebuilds_the_plan_from_the_saved_flags_and_refuses_other_ones(tmp_path, capsys):
    lam, file = load_study("lambda_sensitivity")
    storage = tmp_path / "studies"
    earlier = storage / "lambda_sensitivity" / "paper-20260101-000000"
    earlier.mkdir(parents=True)
    options = {"seeds": 1, "set": ["epochs=2"], "workers_per_trial": None}
    state = {"profile": "paper", "tracking_uri": "sqlite:///x.db", "options": options}
    (earlier / "study.json").write_text(json.dumps({**state, "data_path": str(tmp_path)}))
    argv = ["--resume", "--dry-run", "--storage", str(storage)]
    assert main(lam, file, argv) == 0
    out = capsys.readouterr().out
    assert "10 trials = 10 cells x 1 seeds" in out and "epochs=2" in out
    assert main(lam, file, [*argv, "--seeds", "3"]) == 2
    assert "--seeds 3 differs from the interrupted run's 1" in capsys.readouterr().err
    # The model policy is a flag of the run too: a resume keeps it.
    options["log_models"] = "none"
    (earlier / "study.json").write_text(json.dumps({**state, "data_path": str(tmp_path)}))
    assert main(lam, file, argv) == 0
    assert "models (--log-models none): no trial logs its model: 0 x" in capsys.readouterr().out
    assert main(lam, file, [*argv, "--log-models", "all"]) == 2
    assert "--log-models 'all' differs from the interrupted run's 'none'" in (
        capsys.readouterr().err
    )


def test_tune_persists_a_pointer_to_the_runs_checkpoint_not_the_weights(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint.pt").write_bytes(b"x" * 1000)
    holder = Path(pointer_checkpoint(str(checkpoint)))
    assert [p.name for p in holder.iterdir()] == ["checkpoint_pointer.json"]
    assert follow_pointer(str(holder)) == str(checkpoint.resolve())
    assert follow_pointer(str(checkpoint)) == str(checkpoint)  # a plain checkpoint directory
    assert follow_pointer(None) is None


def test_without_an_address_a_study_starts_its_own_local_ray(monkeypatch):
    import ray

    from uslearn.study import runner

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    runner.connect(None, "in-process")
    # Without address="local", ray.init joins whatever Ray already runs on the machine.
    assert calls == [
        {"address": "local", "resources": {"TRAIN_DRIVER": 1}, "include_dashboard": False}
    ]


@pytest.mark.parametrize("strategy, metric", [("lsd", "epoch"), ("fixmatch_two", "step")])
def test_asha_measures_time_in_the_strategys_own_unit(strategy, metric):
    from uslearn.strategies import entry
    from uslearn.study.runner import _search_config

    search = Search(space={"lr": LogUniform(1e-5, 1e-3)}, num_samples={"default": 4})
    spec = make_spec(arms={"a": {"strategy": strategy}}, grid={}, fixed={}, search=search)
    plan = make_plan(spec, "gpu")
    scheduler = _search_config(plan, 2, str).scheduler
    length = plan.profile.lengths[entry(strategy).unit]  # 30 epochs or 1 500 steps
    # One past the last evaluation: ASHA never stops a trial before its test metrics.
    assert scheduler._time_attr == metric and scheduler._max_t == length + 1


def test_a_profile_restriction_that_leaves_a_grid_key_empty_is_refused():
    spec = make_spec(arms={"sup": {"strategy": "supervised"}}, grid={"label_fraction": [0.2, 0.5]})
    with pytest.raises(ConfigError, match="cpu-long.*keeps label_fraction"):
        make_plan(spec, "cpu-long")
