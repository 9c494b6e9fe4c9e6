"""A command's checkpoint folder remembers the inputs it was made from; resuming needs the same.

The trainers check their own settings when they resume; they cannot know which files their
tensors came from. `check_run_inputs` records a fingerprint of every input (files by their
bytes, folders by their files' names and bytes, other values as given) in
`<checkpoint folder>/run_inputs.json` and, when the folder already holds checkpoints to resume
from, refuses other inputs by name, before any model is loaded. (The ComfyUI nodes key their
run folders by the same kind of fingerprint.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

from ..files import write_json

RECORD = "run_inputs.json"
Value = str | Path | None | Sequence[str | Path]


def check_run_inputs(folder: str | Path | None, inputs: Mapping[str, Value], resume: bool) -> None:
    """Raises ValueError naming the inputs that differ from those of the checkpoints in
    `folder` (when resuming from some); otherwise records these inputs there."""
    if folder is None:
        return
    folder = Path(folder)
    current = {name: fingerprint(value) for name, value in inputs.items()}
    record = folder / RECORD
    if resume and any(folder.glob("checkpoint-*.pt")) and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        differ = [name for name in current if saved.get(name) != current[name]]
        if differ:
            raise ValueError(f"the checkpoints in {folder} were made from other inputs ({', '.join(differ)} "
                             "differ); give the same inputs to resume, or another --checkpoint-dir, or --no-resume "
                             "to start over there")
    write_json(record, current)


def fingerprint(value: Value) -> str:
    """sha256 of a file's bytes, of a folder's files (names and bytes), of several, or of a text."""
    digest = hashlib.sha256()
    for item in _items(value):
        path = Path(item)
        if path.is_file():
            _add_file(digest, path, path.name)
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                _add_file(digest, file, str(file.relative_to(path)))
        else:
            digest.update(f"text:{item}".encode())
    return digest.hexdigest()


def _items(value: Value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def _add_file(digest, path: Path, name: str) -> None:
    digest.update(f"file:{name}:".encode())
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
