"""Training runs with a bad --out, data, numbers or config; studies with a bad --set or flag."""

from __future__ import annotations

import shutil

from corpus.world import Case, World, case, flip_first_byte, train_argv, unshare


@case("permission denied on train --out")
def _(w):
    prefix = unshare()
    tiny = w.tiny()
    (w.root / "locked").mkdir(mode=0o555)
    argv = train_argv(w, data=tiny, out=w.root / "locked" / "run")
    return Case(argv, 1, r"error: .*locked.*: permission denied", "error", [tiny], prefix=prefix)


@case("train into an earlier run without --resume or --overwrite")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, out=run),
        2,
        r"--out .*run: holds an earlier run; --resume continues it, --overwrite replaces it",
        "error",
        [w.root / "tiny", run],
    )


@case("train --out a folder of other files")
def _(w):
    (w.root / "thesis").mkdir()
    (w.root / "thesis" / "config.json").write_text('{"mine": true}')
    return Case(
        train_argv(w, out=w.root / "thesis"),
        2,
        r"--out .*thesis: holds files that uslearn did not write",
        "error",
        [w.root / "tiny", w.root / "thesis"],
    )


@case("train --out a file")
def _(w):
    (w.root / "notes.txt").write_text("mine")
    return Case(
        train_argv(w, out=w.root / "notes.txt"),
        2,
        r"--out .*notes.txt: is a file",
        "error",
        [w.root / "tiny", w.root / "notes.txt"],
    )


@case("train --resume --overwrite")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, "--resume", "--overwrite", out=run),
        2,
        r"--resume continues the run in --out, --overwrite replaces it: give one",
        "error",
        [w.root / "tiny", run],
    )


@case("train --resume on a run whose checkpoint/ was deleted")
def _(w):
    run = w.run()
    shutil.rmtree(run / "checkpoint")
    return Case(
        train_argv(w, "--resume", out=run),
        2,
        r"--resume: .*run holds a run's outputs but no checkpoint/checkpoint.pt",
        "error",
        [w.root / "tiny", run],
    )


@case("train on a dataset whose images.u8 changed (the sampled check)")
def _(w):
    tiny = w.tiny()
    flip_first_byte(tiny)
    return Case(
        train_argv(w, data=tiny),
        2,
        r"tiny: sampled hash .* differs from meta.json's",
        "error",
        [tiny],
    )


@case("train --verify-data full on a dataset whose images.u8 changed")
def _(w):
    tiny = w.tiny()
    flip_first_byte(tiny)
    return Case(
        train_argv(w, "--verify-data", "full", data=tiny),
        2,
        r"tiny: fingerprint \(every byte\) \w+ differs",
        "error",
        [tiny],
    )


@case("train --verify-data maybe")
def _(w):
    return Case(
        train_argv(w, "--verify-data", "maybe"),
        2,
        r"--verify-data: invalid choice: 'maybe'",
        "error",
        [w.root / "tiny"],
    )


@case("train --lr inf")
def _(w):
    return Case(
        train_argv(w, "--lr", "inf"),
        2,
        r"lr='inf': expected a finite number",
        "error",
        [w.root / "tiny"],
    )


@case("train --epochs 2.5")
def _(w):
    return Case(
        train_argv(w, "--epochs", "2.5"),
        2,
        r"epochs='2.5': expected int",
        "error",
        [w.root / "tiny"],
    )


@case("train --workers 0")
def _(w):
    return Case(
        train_argv(w, "--workers", "0"), 2, r"workers=0: expected >= 1", "error", [w.root / "tiny"]
    )


@case("train --workers 2 --resume")
def _(w):
    run = w.run()
    return Case(
        train_argv(w, "--workers", "2", "--resume", out=run),
        2,
        r"--workers > 1 runs without --mlflow and --resume",
        "error",
        [w.root / "tiny", run],
    )


@case("train --init a checkpoint that does not exist")
def _(w):
    return Case(
        train_argv(w, "--init", str(w.root / "lsd" / "best.pt")),
        2,
        r"--init .*lsd/best.pt: no such file or folder",
        "error",
        [w.root / "tiny"],
    )


@case("train --config with lam: .nan")
def _(w):
    (w.root / "c.yaml").write_text("lam: .nan\n")
    return Case(
        train_argv(w, "--config", str(w.root / "c.yaml")),
        2,
        r"lam=nan: expected a finite number",
        "error",
        [w.root / "tiny", w.root / "c.yaml"],
    )


@case("train --config with a key LSD does not read")
def _(w):
    (w.root / "c.yaml").write_text("tau: 0.9\n")
    return Case(
        train_argv(w, "--config", str(w.root / "c.yaml")),
        2,
        r"unknown key\(s\) \['tau'\]",
        "error",
        [w.root / "tiny", w.root / "c.yaml"],
    )


# ------------------------------------------------------------------------- studies


def study_argv(w: World, *extra: str) -> list[str]:
    """Return a ``uslearn study lambda_sensitivity`` that starts nothing before its checks."""
    mlflow = f"sqlite:///{w.root / 'mlflow.db'}"
    return ["study", "lambda_sensitivity", "--profile", "cpu-demo", "--mlflow", mlflow, *extra]


@case("study --set lam=-1 (the grid sweeps lam), --dry-run")
def _(w):
    return Case(
        study_argv(w, "--set", "lam=-1", "--dry-run"),
        2,
        r"--set lam=-1: study 'lambda_sensitivity' sweeps it over its grid \[0.5, 1.0, 2.0, "
        r"5.0, 10.0\], which wins over --set",
        "error",
        check=lambda output: _assert_not_in("shared config", output),
    )


def _assert_not_in(text: str, output: str) -> None:
    assert text not in output, output


@case("study --set alpha=2 (an arm sets alpha)")
def _(w):
    return Case(
        study_argv(w, "--set", "alpha=2"),
        2,
        r"--set alpha=2: .* sets it in its arm 'lsd' \(alpha=1.05\)",
        "error",
    )


@case("study --set seed=3")
def _(w):
    return Case(study_argv(w, "--set", "seed=3"), 2, r"--set seed=3: .*use --seeds N", "error")


@case("study --set lr=nan")
def _(w):
    return Case(
        study_argv(w, "--set", "lr=nan"), 2, r"--set lr=nan: expected a finite number", "error"
    )


@case("study --num-gpus-per-trial nan")
def _(w):
    return Case(
        study_argv(w, "--num-gpus-per-trial", "nan"),
        2,
        r"--num-gpus-per-trial: nan: expected a finite number",
        "error",
    )


@case("study --cpus-per-worker inf")
def _(w):
    return Case(
        study_argv(w, "--cpus-per-worker", "inf"),
        2,
        r"--cpus-per-worker: inf: expected a finite number",
        "error",
    )


@case("study --smoke-test on a dataset whose images.u8 changed: refused before Ray")
def _(w):
    tiny = w.tiny()
    flip_first_byte(tiny)

    def nothing_started(output):
        started = "Started a local Ray instance" in output or (w.root / "mlflow.db").exists()
        assert not started, output

    return Case(
        study_argv(w, "--smoke-test", "--data", str(tiny), "--no-report"),
        2,
        r"tiny: sampled hash .* differs from meta.json's",
        "error",
        [tiny],
        check=nothing_started,
    )


@case("study --dry-run --set lr=0.01 prints it, never a swept value", slow=True)
def _(w):
    def shared_line(output):
        line = next(x for x in output.splitlines() if x.startswith("shared config:"))
        assert "lr=0.01" in line and "lam=" not in line and "alpha=" not in line, line

    return Case(
        study_argv(w, "--set", "lr=0.01", "--dry-run"),
        0,
        r"20 trials = 10 cells x 2 seeds",
        "ok",
        check=shared_line,
    )
