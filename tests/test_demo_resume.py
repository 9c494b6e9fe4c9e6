"""Re-running the demo into a folder: the same inputs resume, others start over, foreign files stay."""

from __future__ import annotations

import json

import pytest
import torch

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


def _demo(out, capsys):
    from instructbooth.cli import main

    code = main(["demo", "--quick", "--weights", "random", "--out", str(out), "--threads", "1"])
    return code, capsys.readouterr()


@pytest.mark.slow  # about 20 s on 2 cores
def test_ctrl_c_during_rl_then_the_same_command_resumes_bit_exactly(tmp_path, monkeypatch, capsys):
    from instructbooth.demo import pipeline
    from instructbooth.lora import load_lora

    assert _demo(tmp_path / "whole", capsys)[0] == 0
    real = pipeline.log_rl_epochs

    def interrupt_after_first_epoch(path, shown, total, log):
        logged = real(path, shown, total, log)
        if logged >= 1:
            raise KeyboardInterrupt
        return logged

    monkeypatch.setattr(pipeline, "log_rl_epochs", interrupt_after_first_epoch)
    code, output = _demo(tmp_path / "split", capsys)
    assert code == 130 and "interrupted; run the same command again to resume" in output.err
    assert "Traceback" not in output.err + output.out
    assert not (tmp_path / "split" / "instructbooth.safetensors").exists()
    first_epoch = json.loads((tmp_path / "split" / "rl" / "metrics.json").read_text())["epochs"][0]
    monkeypatch.setattr(pipeline, "log_rl_epochs", real)

    code, output = _demo(tmp_path / "split", capsys)
    assert code == 0 and "resuming the run" in output.out
    assert "personalize step" not in output.out  # the finished personalization was reused, not redone
    epochs = json.loads((tmp_path / "split" / "rl" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 2 and epochs[0] == first_epoch  # epoch 1 (its timings too) came from the checkpoint
    for name in ("dreambooth.safetensors", "instructbooth.safetensors"):
        whole, _ = load_lora(tmp_path / "whole" / name)
        resumed, _ = load_lora(tmp_path / "split" / name)
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole), name
