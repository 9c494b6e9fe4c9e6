"""Atomic file writes: a file is either the old one or the complete new one, never half.

Every writer goes to a temporary file in the same folder, flushes it to disk and
renames it over the target (`os.replace` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `target`; on success renames it onto `target`.

    The temporary file's name carries the writing process's id (`.<name>.<pid>.<random>.tmp`),
    so the leftovers of a writer that was killed are recognised and removed by the next write
    of the same target (a live writer's are left alone)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _ordinary_mode())  # mkstemp makes 0600; a shared models folder needs readable files
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Deletes `target`'s temporary files left by writers that no longer run; returns them."""
    removed = []
    for path in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        pid = path.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _ordinary_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the process umask (0644 with umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Calls `write(tmp_path)` and moves the result onto `target` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(target: str | os.PathLike, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_safetensors(
    target: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Saves contiguous CPU copies of `tensors` with string `metadata`, atomically."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(target, lambda p: save_file(plain, str(p), metadata=metadata))


def write_torch(target: str | os.PathLike, obj: Any) -> Path:
    """`torch.save` through a temporary file (training checkpoints: optimizer, RNG states).
    torch reports a full disk as RuntimeError("... unexpected pos ..."); it becomes an OSError
    that names the file (the previous checkpoint stays as it was)."""
    def save(path: Path) -> None:
        try:
            torch.save(obj, path)
        except RuntimeError as error:
            raise OSError(f"could not write {target} ({error}); is the disk full?") from error

    return atomic_write(target, save)
