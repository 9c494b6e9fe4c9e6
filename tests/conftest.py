"""Shared test fixtures: tiny seeded models and the paths of shared test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# An explicit folder of fixtures (the original ../shared/fixtures layout) replaces the in-repo copy.
EXPLICIT_FIXTURES = os.environ.get("INSTRUCTBOOTH_FIXTURES")

# Tiny models spend their time in thread hand-offs, not arithmetic: one thread ran the
# DPO tests in 17 s where two took 114 s on the same 2-core machine (measured).
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Fresh tiny SD-family components (seed 0), float32 on CPU."""
    from instructbooth.components import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def shared_fixtures(tmp_path_factory) -> Path:
    """A folder holding imagereward_tiny/ in the reference's layout: rebuilt from the compact
    copy in tests/data (tests/imagereward_fixture.py), or $INSTRUCTBOOTH_FIXTURES when set."""
    if EXPLICIT_FIXTURES:
        if not Path(EXPLICIT_FIXTURES, "imagereward_tiny").is_dir():
            raise pytest.UsageError(f"INSTRUCTBOOTH_FIXTURES={EXPLICIT_FIXTURES} has no imagereward_tiny/ folder")
        return Path(EXPLICIT_FIXTURES)
    from imagereward_fixture import materialize

    root = tmp_path_factory.mktemp("fixtures")
    materialize(root / "imagereward_tiny")
    return root


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The node pack loaded against the ComfyUI stand-ins, with its own ComfyUI root folder (one per
    test module: the stand-ins' state does not leak between modules)."""
    from nodes_harness import loaded_pack

    with loaded_pack(tmp_path_factory.mktemp("comfy_root")) as module:
        yield module
