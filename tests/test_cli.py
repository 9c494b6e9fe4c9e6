"""The `instructbooth` command itself: Ctrl-C ends without a traceback, OpenMP waits passively."""

from __future__ import annotations

import os
import subprocess
import sys

from instructbooth import cli


def test_ctrl_c_ends_with_a_resume_hint_and_exit_130(monkeypatch, capsys):
    import instructbooth.commands.score as score

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(score, "run", interrupted)
    assert cli.main(["score", "--model", "m.pt", "--prompt", "a dog", "x.png"]) == 130
    captured = capsys.readouterr()
    assert "interrupted; run the same command again to resume" in captured.err and "Traceback" not in captured.err


def test_openmp_waits_passively_unless_told_otherwise():
    code = "import os, instructbooth.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert unset.stdout.strip() == "PASSIVE"
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "ACTIVE"


def test_rl_help_carries_each_default_with_its_whole_reason(capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli.main(["rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2 x 4 = 8 samples per update, 2 updates per epoch" in text  # a continuation line of the comment
    assert "0.424 at 0.25 against 0.343 at 0.5" in text and "(default 0.25)" in text
    assert "std 0.040 and 0.021 against a median of 0.29" in text and "(default 0.96)" in text


def test_unknown_or_missing_devices_are_named_before_any_work(capsys, tmp_path):
    import torch
    from PIL import Image

    from instructbooth.devices import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    import pytest

    with pytest.raises(ValueError, match="unknown device 'banana'.*here: cpu"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU.*--device cpu"):
            resolve_device("cuda:1")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "m.pt").write_bytes(b"not read yet")
    for command in (["score", "--model", str(tmp_path / "m.pt"), "--prompt", "p", str(tmp_path / "x.png")],
                    ["generate", "--random-model", "tiny", "--prompt", "p", "--output-dir", str(tmp_path / "o")]):
        assert cli.main(command + ["--device", "banana"]) == 1
        err = capsys.readouterr().err
        assert "unknown device 'banana'" in err and "Traceback" not in err
