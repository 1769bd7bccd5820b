"""Run safety below the command line: atomic files, checkpoint reading, resume rules, --out.

The same faults go through the public command line in tests/test_bad_input_corpus.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from uslearn import files
from uslearn.errors import EnvError, UserError
from uslearn.strategies.registry import resolved_config, resume_conflicts
from uslearn.train_cli import check_out, run_folder


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for limits that would hit pytest itself)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_write_that_fails_keeps_the_previous_file_and_names_it(tmp_path):
    (tmp_path / "metrics.json").write_text("earlier run")
    (tmp_path / "best.pt").write_text("earlier weights")
    result = run_python(
        """
        import resource, signal
        import torch
        from uslearn import files
        from uslearn.errors import EnvError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            files.write_text("metrics.json", "x" * 10_000, "the metrics")
        except EnvError as err:
            print(err)
        try:  # torch.save hides the errno in a RuntimeError: the message must still say why
            with files.replacing("best.pt", "the best weights") as handle:
                torch.save({"w": torch.zeros(10_000)}, handle)
        except EnvError as err:
            print(err)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "metrics.json: file too large while writing the metrics (the previous metrics.json is "
        "unchanged)",
        "best.pt: file too large while writing the best weights (the previous best.pt is "
        "unchanged)",
    ]
    assert (tmp_path / "metrics.json").read_text() == "earlier run"
    assert (tmp_path / "best.pt").read_text() == "earlier weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "metrics.json"]


def test_an_error_inside_the_block_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("kept")
    with pytest.raises(ValueError, match="boom"), files.replacing(target, "the config") as handle:
        handle.write(b"half")
        raise ValueError("boom")
    assert target.read_text() == "kept" and list(tmp_path.iterdir()) == [target]
    files.write_text(target, "new", "the config")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_permission_denied_is_an_env_error_naming_the_target(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    with pytest.raises(EnvError, match=r"locked/x.json: permission denied .*nothing was written"):
        files.write_text(folder / "x.json", "{}", "the file")


LSD = resolved_config({"strategy": "lsd"})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"epochs": 7}, []),  # the length may change
        ({"lam": 5.0}, ["lam=5.0 (the checkpoint's: 2.0)"]),
        (
            {"lr": 0.001, "seed": 3},
            ["lr=0.001 (the checkpoint's: 0.0001)", "seed=3 (the checkpoint's: 0)"],
        ),
        ({"dataset_fingerprint": "b"}, ["dataset_fingerprint='b' (the checkpoint's: 'a')"]),
    ],
)
def test_resume_conflicts_name_every_key_but_the_length(change, expected):
    saved = {**LSD, "dataset_fingerprint": "a"}
    assert resume_conflicts(saved, {**saved, **change}) == expected


def test_resume_conflicts_give_only_the_strategy_when_it_differs():
    current = resolved_config({"strategy": "fixmatch_two", "steps": 9})
    assert resume_conflicts(LSD, current) == ["strategy='fixmatch_two' (the checkpoint's: 'lsd')"]
    old = {"strategy": "fixmatch_two", "seed": 0}  # written before the own fields were stored
    assert resume_conflicts(old, current) == []


@pytest.fixture(scope="module")
def bad_torch_files(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("torch_files")
    torch.save({"model": {"w": torch.ones(3)}, "config": {"lam": 2.0}}, folder / "good.pt")
    (folder / "truncated.pt").write_bytes((folder / "good.pt").read_bytes()[:300])
    (folder / "noise.pt").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.pt").write_bytes(b"")
    torch.save({"model": Path("x")}, folder / "object.pt")
    return folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated.pt", r"truncated or corrupt torch file \(PytorchStreamReader"),
        ("noise.pt", r"not a torch file, or a corrupt one"),
        ("empty.pt", r"truncated or corrupt torch file \(empty\)"),
        ("object.pt", r"holds a Python object \(pathlib.*\).*can run code"),
    ],
)
def test_a_bad_torch_file_is_one_line_without_torchs_advice(bad_torch_files, name, message):
    from uslearn.models import load_file

    with pytest.raises(UserError, match=message) as caught:
        load_file(bad_torch_files / name)
    text = str(caught.value)
    assert "weights_only" not in text and "\n" not in text and name in text
    assert load_file(bad_torch_files / "good.pt")["config"] == {"lam": 2.0}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_any_random_bytes_give_the_one_line_error(tmp_path):
    """Random bytes reach many states of torch's restricted unpickler (IndexError from an
    empty mark stack was one that escaped as a traceback in CI); all must give one line."""
    import numpy as np

    from uslearn.models import load_file

    rng = np.random.default_rng(0)
    for index in range(300):
        path = tmp_path / f"noise{index}.pt"
        path.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
        with pytest.raises(UserError, match=r"(not a torch file|truncated or corrupt)"):
            load_file(path)


def test_bad_train_input_fails_before_torch_is_imported(tiny_phantom, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_phantom, changed)
    with open(changed / "images.u8", "r+b") as handle:
        handle.write(b"\xff\x00\xff")
    (tmp_path / "bad.yaml").write_text("lam: [1\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    base = ["train", "--strategy", "lsd", "--data", str(tiny_phantom), "--out"]
    cases = {
        "missing.yaml: no such config file": [str(tmp_path / "r"), "--config", "missing.yaml"],
        "not valid YAML": [str(tmp_path / "r"), "--config", str(tmp_path / "bad.yaml")],
        "lr='nan': expected a finite number": [str(tmp_path / "r"), "--lr", "nan"],
        "epochs='2.5': expected int": [str(tmp_path / "r"), "--epochs", "2.5"],
        "is a file": [str(tmp_path / "a_file")],
        "did not write (notes.txt)": [str(tmp_path / "other")],
        "--init nope.pt: no such file": [str(tmp_path / "r"), "--init", "nope.pt"],
        "--workers > 1 runs without": [str(tmp_path / "r"), "--workers", "2", "--resume"],
        "sampled hash": [str(tmp_path / "r"), "--data", str(changed)],
    }
    result = run_python(
        f"""
        import contextlib, io, sys
        from uslearn.cli import main

        for expected, extra in {cases!r}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main({base!r} + extra)
            assert code == 2 and expected in err.getvalue(), (code, err.getvalue())
            assert "torch" not in sys.modules, expected
        print("checked", len({cases!r}))
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "checked 9" in result.stdout, result.stderr
    assert not (tmp_path / "r").exists()


def test_out_accepts_new_empty_and_killed_run_folders_and_refuses_the_rest(tmp_path):
    check_out(tmp_path / "new", resume=False, overwrite=False)
    check_out(tmp_path, resume=False, overwrite=False)  # empty
    killed = tmp_path / "killed"
    (killed / "checkpoint").mkdir(parents=True)
    (killed / "checkpoint" / ".checkpoint.pt.tmp-99999999").write_bytes(b"half")
    (killed / ".metrics.json.tmp-99999999").write_text("{")
    check_out(killed, resume=True, overwrite=False)  # nothing finished: accepted
    with run_folder(killed, resume=True, overwrite=False) as resume_from:
        assert resume_from is None
        assert not list(killed.rglob(".*.tmp-*")), "a killed run's temporary files stay"
        second = run_folder(killed, resume=True, overwrite=False)
        with pytest.raises(UserError, match=r"another uslearn command \(pid \d+\) is writing"):
            second.__enter__()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')  # a user's file with one of our names
    with pytest.raises(UserError, match=r"holds files that uslearn did not write \(config.json\)"):
        check_out(mine, resume=False, overwrite=True)
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text(json.dumps({"test/f1_weighted": 0.5}))
    (done / "best.pt").write_bytes(b"w")
    with pytest.raises(UserError, match="holds an earlier run; --resume continues it"):
        check_out(done, resume=False, overwrite=False)
    with pytest.raises(UserError, match="no checkpoint/checkpoint.pt to continue"):
        check_out(done, resume=True, overwrite=False)
    check_out(done, resume=False, overwrite=True)
    with run_folder(done, resume=False, overwrite=True) as resume_from:
        assert resume_from is None and list(done.iterdir()) == []
    assert not list(tmp_path.glob(".*.lock"))
