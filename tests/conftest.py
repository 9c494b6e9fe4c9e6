"""Shared test fixtures: tiny seeded models and the paths of shared test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(os.environ.get("INSTRUCTBOOTH_FIXTURES", REPO.parent / "shared" / "fixtures"))

# Tiny models spend their time in thread hand-offs, not arithmetic: one thread ran the
# DPO tests in 17 s where two took 114 s on the same 2-core machine (measured).
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Fresh tiny SD-family components (seed 0), float32 on CPU."""
    from instructbooth.components import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}; set INSTRUCTBOOTH_FIXTURES")
    return SHARED_FIXTURES
