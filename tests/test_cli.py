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
