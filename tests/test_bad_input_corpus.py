"""Bad inputs and faults through the public command line (``python -m uslearn``).

Every case builds its inputs in a folder of its own, hashes every input and every earlier
dataset, runs the command line and checks:

- the exit code (2 bad input, 1 a fault of the machine or a failed check, 0 handled);
- that the output names the problem (a pattern) and holds no traceback;
- that nothing hashed changed (inputs, earlier datasets, an earlier run's checkpoint, best.pt
  and metrics.json), that no ``.partial-*``, ``.tmp-<pid>`` or lock file is left, and that no
  file the command wrote holds a patient name or raw ID of the export (``DUPONT``, ``IPP9...``).

Data cases copy a small PNG export, its dataset and DICOM files; training cases use the tiny
phantom at 32 px, one step per epoch, and a finished two-step run of it, made once per session
(also the model package of the predict / curate / register cases).

Outcomes: ``error`` (refused with one line), ``skipped`` (bad items skipped under --skip-bad
and reported), ``ok`` (handled correctly, e.g. 12-bit PNGs scaled by their real depth).
The cases run three at a time: each is a process, mostly waiting on Python's start-up.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# Each import registers its cases in CASES.
from corpus import (  # noqa: F401
    data_cases,
    dataset_cases,
    image_cases,
    input_cases,
    labelstudio_cases,
    output_cases,
    predict_cases,
    resume_cases,
    run_cases,
)
from corpus.world import CASES, SECRETS, SLOW, Case, World, make_base, popen


def _fingerprint(paths: list[Path]) -> dict[str, str | None]:
    """Return {path: sha256 or None} of every file under the watched paths (hidden ones too)."""
    found: dict[str, str | None] = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not path.exists():
            found[str(path)] = None
        for file in files:
            try:
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
            except PermissionError:
                found[str(file)] = f"mode {file.stat().st_mode:o}"
    return found


@dataclass
class Result:
    case: Case
    code: int
    output: str
    before: dict
    after: dict
    written: dict[str, bytes]
    seconds: float


def _run(name: str, base: Path, root: Path) -> Result:
    started = time.monotonic()
    w = World(base, root)
    c = CASES[name](w)
    before = _fingerprint(c.watch)
    existing = {p for p in root.rglob("*")}
    if c.runner is not None:
        code, output = c.runner(c, w)
    else:
        proc = popen(c.argv, c, w)
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0] + "\n(timed out)"
        code = proc.returncode
    for path in root.rglob("*"):  # let the hashing read what a case locked away
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    if c.check is not None and code == c.code:
        c.check(output)
    # Weight files are not scanned for names: 134 MB of floats hold any 4 bytes by chance.
    written = {
        str(p): b"" if p.suffix == ".pt" else p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p not in existing
    }
    seconds = time.monotonic() - started
    return Result(c, code, output, before, _fingerprint(c.watch), written, seconds)


@pytest.fixture(scope="module")
def corpus(request):
    """Run the selected cases, three at a time; return {name: Future of Result}."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_bad_input" and hasattr(item, "callspec")
    ]
    top = Path(tempfile.mkdtemp(prefix="uslearn-corpus-"))
    top.chmod(0o755)  # the permission cases run as an unprivileged user
    make_base(top / "base")
    pool = ThreadPoolExecutor(3)
    futures: dict[str, Future] = {}
    # The slow ones (torch's import, the killed import) first, so that the rest fill the gaps.
    slow = sorted(selected, key=lambda name: name not in SLOW)
    for k, name in enumerate(slow):
        root = top / f"case{k:02d}"
        root.mkdir(mode=0o777)
        root.chmod(0o777)
        futures[name] = pool.submit(_run, name, top / "base", root)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    for path in top.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(corpus, name):
    result: Result = corpus[name].result()
    c, output = result.case, result.output
    assert result.code == c.code, f"exit {result.code}, expected {c.code}:\n{output}"
    assert re.search(c.message, output), f"no /{c.message}/ in:\n{output}"
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) <= 1, f"expected one error line at most:\n{output}"
    assert result.after == result.before, "an input or an earlier dataset changed"
    pattern = r"\.partial-|\.lock$|\.old-|\.tmp-\d+$"
    leftovers = [p for p in result.written if re.search(pattern, p)]
    assert not leftovers, leftovers
    for path, data in result.written.items():
        for secret in SECRETS:
            assert secret not in data, f"{path} holds {secret!r}"


def test_corpus_counts_by_outcome(corpus, capsys):
    """The corpus holds at least 50 cases; print how many ran per outcome."""
    results = {name: future.result() for name, future in corpus.items()}
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result.case.outcome] = counts.get(result.case.outcome, 0) + 1
    slowest = sorted(results, key=lambda name: -results[name].seconds)[:5]
    with capsys.disabled():
        print(
            "\ncorpus cases by outcome:", ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        )
        print("slowest:", "; ".join(f"{n} {results[n].seconds:.1f} s" for n in slowest))
    assert len(CASES) >= 50
