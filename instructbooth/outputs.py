"""Where a command writes, checked before any work: nothing is overwritten, nothing is lost.

`check_output_file` refuses an output that is an input (the base checkpoint, a LoRA, a photo,
the reward file), lies in an input or checkpoint folder, is a folder, has too long a name or
sits where nothing can be written. `check_output_folder` does the same for folders a command
fills (checkpoints, images). `save_or_rescue` writes the result and, if that still fails (a
full disk), writes it to the temporary folder instead and says where.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

PathLike = str | os.PathLike


class OutputError(ValueError):
    """An output location that cannot be used; the message says what to choose instead."""


def check_output_file(output: PathLike, inputs: Iterable[PathLike | None] = (),
                      folders: Iterable[PathLike | None] = ()) -> Path:
    """The output file as a Path, or OutputError. `inputs`: files and folders the command
    reads; `folders`: folders it manages itself (checkpoints), which must not hold it."""
    path = Path(output).expanduser()
    _check_name(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the output, e.g. {path / 'result.safetensors'}")
    for item in _existing(inputs):
        if _same(path, item) or (item.is_dir() and _inside(path, item)):
            what = "folder" if item.is_dir() and not _same(path, item) else "file"
            raise OutputError(f"the output {path} would overwrite the input {what} {item}; write it somewhere else")
    for folder in _existing(folders):
        if _inside(path, folder):
            raise OutputError(f"the output {path} is inside the checkpoint folder {folder}, which the run manages "
                              "(old checkpoints are deleted); write it somewhere else")
    _check_writable(path.parent)
    return path


def check_output_folder(folder: PathLike, inputs: Iterable[PathLike | None] = ()) -> Path:
    """A folder the command will create or fill, or OutputError (a file, an input, not writable)."""
    path = Path(folder).expanduser()
    _check_name(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder; give a folder for it")
    for item in _existing(inputs):
        if _same(path, item):
            raise OutputError(f"the folder {path} is also an input of this command; give another folder")
    _check_writable(path if path.is_dir() else path.parent)
    return path


def save_or_rescue(save: Callable[[Path], Path], target: Path, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """`save(target)`; when that raises OSError, `save(<temp folder>/instructbooth-rescued-...)`.
    Returns (where it was written, whether that is the target)."""
    try:
        return save(target), True
    except OSError as error:
        rescue = Path(tempfile.gettempdir()) / f"instructbooth-rescued-{time.strftime('%Y%m%d-%H%M%S')}-{target.name}"
        written = save(rescue)
        log(f"could not write {target} ({error.strerror or error}); the result is kept at {written}: "
            "move it where you want it")
        return written, False


def _existing(paths: Iterable[PathLike | None]) -> list[Path]:
    return [Path(p).expanduser() for p in paths if p and Path(p).expanduser().exists()]


def _same(a: Path, b: Path) -> bool:
    """The same file or folder (hard links and symlinks included), or the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _check_name(path: Path) -> None:
    limit = _name_limit(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"the name {part[:40]}... is {len(os.fsencode(part))} bytes; this file system allows "
                              f"{limit}: choose a shorter name")


def _name_limit(path: Path) -> int:
    anchor = _nearest_existing(path)
    try:
        return os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:  # a name too long to even look up
            continue
    return Path.cwd()


def _check_writable(folder: Path) -> None:
    """Probes by creating a file in `folder`, or in its nearest existing ancestor (which then
    must be a folder: a file there means the path cannot be made)."""
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        raise OutputError(f"cannot create {folder}: {anchor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as error:
        raise OutputError(f"cannot write in {anchor} ({error.strerror or error}); choose a folder you can write to "
                          "or fix its permissions") from None
