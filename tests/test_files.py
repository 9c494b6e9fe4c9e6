"""Atomic writes: the target is the old file or the whole new one, with an ordinary file mode."""

from __future__ import annotations

import os

import pytest

from instructbooth.files import write_json, write_text


def test_written_files_get_the_mode_a_plain_open_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "sub" / "m.json", {"a": 1})
        assert path.read_text() == '{\n  "a": 1\n}\n'
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: ComfyUI's files are 0644
        os.umask(0o077)
        assert write_text(tmp_path / "private.txt", "x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from instructbooth.files import atomic_write

    target = write_text(tmp_path / "keep.txt", "old")

    def broken(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_killed_writer_leaves_no_temporary_behind_after_the_next_write(tmp_path):
    """A child process is killed (SIGKILL) in the middle of writing a large file; the target is
    untouched, and the next write of it removes the dead writer's temporary file."""
    import signal
    import subprocess
    import sys
    import time

    target = write_text(tmp_path / "lora.safetensors", "old")
    code = ("import sys, time; from instructbooth.files import atomic_write\n"
            "def slow(path):\n"
            "    with open(path, 'wb') as f:\n"
            "        f.write(b'x' * 1_000_000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(target)!r}, slow)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    leftovers = list(tmp_path.glob(".lora.safetensors.*.tmp"))
    assert len(leftovers) == 1 and target.read_text() == "old"  # killed mid-write: the old file is intact
    time.sleep(0.01)
    write_text(target, "new")
    assert target.read_text() == "new" and list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_a_full_disk_during_a_checkpoint_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    import torch

    from instructbooth.files import write_torch

    previous = write_torch(tmp_path / "checkpoint-0000001.pt", {"step": 1})

    def full_disk(obj, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write .*checkpoint-0000001.pt.*is the disk full"):
        write_torch(previous, {"step": 2})
    monkeypatch.undo()
    assert torch.load(previous, weights_only=True) == {"step": 1} and list(tmp_path.glob(".*.tmp")) == []
