"""Training checkpoints: numbered files written atomically, the newest found again on resume.

A checkpoint is a plain dict of tensors, numbers and strings (`torch.load(weights_only=True)`
reads it); `capture_rng` / `restore_rng` put `torch.Generator` states in it so that a resumed
run draws the same numbers; `config_mismatch` refuses resuming a different run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..files import write_torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
GLOBAL_RNG = "torch_global"  # key of torch's global CPU generator in `capture_rng` output


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """States of the named generators plus torch's global CPU generator."""
    states = {name: gen.get_state() for name, gen in generators.items()}
    states[GLOBAL_RNG] = torch.get_rng_state()
    return states


def restore_rng(generators: Mapping[str, torch.Generator], states: Mapping[str, torch.Tensor]) -> None:
    """Puts back what `capture_rng` saved; every named generator must have a state."""
    missing = sorted(set(generators) - set(states))
    if missing:
        raise ValueError(f"checkpoint has no RNG state for {missing}; it was written by a different trainer")
    for name, gen in generators.items():
        gen.set_state(states[name])
    if GLOBAL_RNG in states:
        torch.set_rng_state(states[GLOBAL_RNG])


# --- checkpoint files --------------------------------------------------------------------------


class CheckpointStore:
    """`folder/checkpoint-<step>.pt` files: written atomically, newest kept, older pruned.

    A checkpoint is whatever dict the trainer passes (conventionally: "step", "trainable",
    "optimizer", "rng", "config", ...). Files are read with `weights_only=True`.
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Writes `state` as the checkpoint of `step`, then prunes to the newest `keep`."""
        path = write_torch(self.folder / f"checkpoint-{step:07d}.pt", {"step": step, **state})
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        """Deletes every checkpoint in the folder (starting a run over)."""
        for path in self.paths():
            path.unlink(missing_ok=True)

    def load(self, path: str | Path | None = None) -> dict[str, Any] | None:
        """The given checkpoint, or the newest one; None when the folder has none."""
        path = Path(path) if path is not None else self.latest()
        if path is None:
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"cannot read training checkpoint {path}: {error}; delete it to start over") from error


def state_fingerprint(state: Mapping[str, torch.Tensor] | None) -> str:
    """sha256 of a tensor dict's names and float32 values ("" for None or empty): tells
    whether a resumed run starts from the same LoRA / weights as the interrupted one."""
    if not state:
        return ""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


SAMPLES_PER_TENSOR = 4096  # values read from each tensor by `sampled_fingerprint`


def sampled_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of names, shapes, dtypes and evenly spaced values of every tensor: any fine-tune
    or LoRA changes a weight matrix throughout, so the sampled values change too, and a 4 GB model
    is read in well under a second (`state_fingerprint` reads every value)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            digest.update(flat[::step].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any], may_differ: Iterable[str] = ()) -> list[str]:
    """Names of config fields that differ between a checkpoint and this run (sorted)."""
    allowed = set(may_differ)
    keys = (set(saved) | set(current)) - allowed
    return sorted(k for k in keys if saved.get(k) != current.get(k))
