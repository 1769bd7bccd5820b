"""Shared fixtures: small datasets built by plain factory functions, CUDA-gated tests."""

from __future__ import annotations

import glob
import os

import pytest

# Ray 2.60 turns token auth on by default; local test clusters do not need it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("USLEARN_PROGRESS", "0")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` cleanly when CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """Return the path of the tiny phantom preset, generated once per test session."""
    from uslearn.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("phantom") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def postgres():
    """Skip (fail under CI) when Debian's PostgreSQL binaries, which the head's store and the
    rehearsal run (cluster/head_services.sh pg-start), are missing."""
    if glob.glob("/usr/lib/postgresql/*/bin/initdb") or os.environ.get("PG_BIN"):
        return
    reason = "PostgreSQL is not installed (apt-get install -y postgresql); .ci/run installs it"
    if os.environ.get("USLEARN_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
