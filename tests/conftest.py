"""Shared fixtures. Tests run offline; real data comes from ../shared/data when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data_dir() -> Path:
    """The read-only benchmark data beside the repository (skips where it is absent)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def float64():
    """Run a test in float64 (exact-math oracles), restoring the default dtype afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
