"""Reading checkpoint files safely, with errors that say what is wrong with the file.

Safetensors headers are checked against the file size first, so an empty, truncated or
mislabelled file is reported as such instead of as a parser message; pickled files are
read with `weights_only=True` and never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .architecture import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file, or of a .ckpt/.pt holding only tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        metadata = _safetensors_metadata(path)
        try:
            return load_file(str(path)), metadata
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is a damaged safetensors file ({error}); download it again") from error
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickled(path), {}
    raise CheckpointError(
        f"{path.name}: unknown checkpoint type {path.suffix!r}; expected {SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES} "
        "or a diffusers folder"
    )


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The header's string metadata, after checking the header against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(8)
        length = int.from_bytes(start, "little") if len(start) == 8 else size
        if start[:2] == b"PK" or start[:1] == b"\x80":
            raise CheckpointError(f"{path} is a pickled PyTorch checkpoint, not safetensors; rename it to .ckpt")
        if length > size - 8:
            raise CheckpointError(
                f"{path} is not a valid safetensors file: its header claims {length} bytes but the file has "
                f"{size}; it is truncated or another kind of file renamed to .safetensors"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    try:
        data_end = max((int(entry["data_offsets"][1]) for k, entry in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise CheckpointError(f"{path} is not a safetensors file (malformed header: {error!r})") from error
    if 8 + length + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: the header promises {8 + length + data_end} bytes but the file has {size}; "
            "the download was cut off, fetch it again"
        )
    return dict(header.get("__metadata__") or {})


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch.save file, never running pickled code (weights_only)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and is not loaded for safety ({error}); "
            "convert it to .safetensors"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint ({error}); download it again") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(loaded).__name__})")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def file_sha256(path: str | os.PathLike, short: bool = False, chunk_bytes: int = 1 << 20,
                progress: Callable[[int], None] | None = None) -> str:  # fmt: skip
    """SHA-256 of a file's bytes, streamed. `short=True` gives the first 10 hex digits
    (the "AutoV2" hash that A1111 and Civitai show)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    text = digest.hexdigest()
    return text[:10] if short else text
