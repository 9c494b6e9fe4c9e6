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
