"""Finding and reading CLIP / DINO weights the user brings, offline and without running code.

A model is given as a path to either
- a transformers folder: `config.json` + `model.safetensors` (or shards with their index),
  optionally `preprocessor_config.json` and tokenizer files (e.g. openai/clip-vit-large-patch14,
  facebook/dino-vits16 as downloaded from the hub), or
- one weights file (`.safetensors`; `.pt` / `.pth` / `.bin` are read with `weights_only=True`),
  with an optional config beside it (`<stem>.json` or `config.json`); without one the
  architecture is inferred from the tensor shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

SAFETENSORS = (".safetensors", ".sft")
PICKLED = (".pt", ".pth", ".bin", ".ckpt")
WRAPPERS = ("state_dict", "model", "teacher")  # keys under which training checkpoints keep the weights
FORMS = ("a transformers folder (config.json + model.safetensors, as downloaded from the hub) "
         "or one .safetensors / .pth file")


class EvaluationWeightsError(ValueError):
    """Weights that are missing or are not what was asked for; the message says what to bring."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's pieces are."""

    weights: list[Path]  # one file, or the shards of one model
    folder: Path  # where config, processor and tokenizer files are looked up
    config: dict[str, Any] | None  # the transformers config, when one was found

    @property
    def name(self) -> str:
        return str(self.weights[0] if len(self.weights) == 1 else self.folder)


def locate(path: str | Path, what: str, where_hint: str) -> WeightsSource:
    """The weights at `path` (a folder or a file) or EvaluationWeightsError naming what is
    expected. `what`: e.g. "CLIP"; `where_hint`: where such files go (a folder, a flag)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EvaluationWeightsError(f"no {what} weights at {path}. Expected {FORMS}; {where_hint}")
    if path.is_dir():
        return _in_folder(path, what, where_hint)
    if path.suffix.lower() not in SAFETENSORS + PICKLED:
        raise EvaluationWeightsError(f"{path} is not a weights file (found suffix {path.suffix!r}, expected "
                                     f"{', '.join(SAFETENSORS + PICKLED)}); {what} weights come as {FORMS}")
    return WeightsSource([path], path.parent, _sidecar_config(path))


def _in_folder(folder: Path, what: str, where_hint: str) -> WeightsSource:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return WeightsSource([folder / shard for shard in shards], folder, _read_json_if(folder / "config.json"))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return WeightsSource([folder / name], folder, _read_json_if(folder / "config.json"))
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SAFETENSORS + PICKLED)
    if len(files) == 1:
        return WeightsSource(files, folder, _sidecar_config(files[0]))
    found = ", ".join(p.name for p in sorted(folder.iterdir())[:8]) or "nothing"
    raise EvaluationWeightsError(f"no single {what} weights file in {folder} (found: {found}). Expected {FORMS}; "
                                 f"{where_hint}")


def _sidecar_config(weights: Path) -> dict[str, Any] | None:
    for candidate in (weights.with_suffix(".json"), weights.parent / "config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return None


def _read_json_if(path: Path) -> dict[str, Any] | None:
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationWeightsError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise EvaluationWeightsError(f"{path} holds {type(data).__name__}, not a JSON object (a model config)")
    return data


def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """Every tensor of the source's files, on the CPU; no file can run code while loading."""
    state: dict[str, torch.Tensor] = {}
    for path in source.weights:
        state.update(_read_file(path))
    if not state:
        raise EvaluationWeightsError(f"{source.name} holds no tensors")
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EvaluationWeightsError(f"weights file {path} is missing (named by the folder's index)")
    if path.suffix.lower() in SAFETENSORS:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise EvaluationWeightsError(f"cannot read {path} as safetensors ({error}); is the download complete?")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refuses code: anything but plain tensors and containers
        raise EvaluationWeightsError(f"cannot read {path} with weights_only=True ({str(error).splitlines()[0]}); "
                                     "only plain state dicts load (no code runs); use a .safetensors copy") from None
    return _unwrap(loaded, path)


def _unwrap(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise EvaluationWeightsError(f"{path} is not a state dict of tensors (found {type(loaded).__name__})")
    prefixes = ("module.", "backbone.")
    return {_strip(key, prefixes): value for key, value in loaded.items()}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def describe_keys(state: dict[str, torch.Tensor], limit: int = 4) -> str:
    """A few key names, for messages that say what a file holds."""
    keys = sorted(state)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
