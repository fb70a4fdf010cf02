"""Shared fixtures: where the real data lives, and small data modules built from the real configs."""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin while waiting make tiny CPU models up to 10x slower as soon as two
# processes share the cores (DDP tests, subprocess runs): wait passively. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MRE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(sub: str) -> Path:
    """Path of a real data set under ../shared/data, or skip the test when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data not present at {p}")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenizer cache shared by the session but outside the repo and the user's home."""
    monkeypatch.setenv("MRE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
    threads slow these small ops down by an order of magnitude (`pytestmark = usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
