"""Re-running the demo into a folder: the same inputs resume, others start over, foreign files stay."""

from __future__ import annotations

import json

import pytest

from instructbooth.demo.resume import RUN_RECORD, prepare_run_folder, weights_fingerprint


def test_same_inputs_resume_and_other_inputs_start_over(tmp_path):
    out = tmp_path / "demo"
    assert prepare_run_folder(out, {"seed": 0}, None) is False  # a new folder: nothing to resume
    (out / "rl").mkdir()
    (out / "rl" / "checkpoint-000001.pt").write_bytes(b"x")
    (out / "dreambooth.safetensors").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    assert prepare_run_folder(out, {"seed": 0}, None) is True  # same settings and weights: resume
    assert (out / "rl" / "checkpoint-000001.pt").exists() and (out / "dreambooth.safetensors").exists()

    assert prepare_run_folder(out, {"seed": 1}, None) is False  # another seed: the old run's outputs go
    assert not (out / "rl").exists() and not (out / "dreambooth.safetensors").exists()
    assert (out / "notes.txt").read_text() == "mine"  # files the demo does not write are kept
    assert json.loads((out / RUN_RECORD).read_text())["config"] == {"seed": 1}


def test_other_weights_start_over_and_foreign_folders_are_refused(tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "demo_model.safetensors").write_bytes(b"one")
    before = weights_fingerprint(weights)
    (weights / "demo_model.safetensors").write_bytes(b"two")
    assert weights_fingerprint(weights) != before and weights_fingerprint(None) != weights_fingerprint("random")

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.md").write_text("my own report")
    with pytest.raises(ValueError, match="not from a demo run.*new or empty folder"):
        prepare_run_folder(foreign, {"seed": 0}, None)
    assert (foreign / "report.md").read_text() == "my own report"
