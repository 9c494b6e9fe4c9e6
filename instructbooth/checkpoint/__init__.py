"""Load and save Stable Diffusion 1.5 checkpoints offline, as `SDComponents`.

Three sources give the same components:
- a single-file LDM checkpoint (`.safetensors`; `.ckpt`/`.pt` only as plain tensors),
- an LDM-format state dict in memory (what ComfyUI's MODEL/CLIP/VAE hold), and
- a diffusers folder (unet/, vae/, text_encoder/ with config.json and weights).

The architecture is read from key names and shapes (`checkpoint.architecture`), the names are
translated by `checkpoint.keys`, and loading is strict: a missing, unexpected or misshapen
tensor is an error that names a few of them. `ldm_state_dict` / `save_checkpoint` are
the exact inverse, which the tests use to build small SD1.5-shaped checkpoints.

Modules: `convert` (LDM single-file checkpoints and diffusers folders <-> SDComponents),
`files` (reading checkpoint files safely), `keys` (LDM <-> diffusers key names),
`architecture` (the architecture read from a state dict's keys and shapes).
"""

from __future__ import annotations

from .convert import (
    ArchitectureHints,
    CheckpointError,
    components_from_ldm,
    detect_model_family,
    file_sha256,
    ldm_state_dict,
    load_checkpoint,
    load_diffusers_folder,
    pad_text_layers,
    read_state_dict,
    save_checkpoint,
    save_diffusers_folder,
)

__all__ = [
    "ArchitectureHints",
    "CheckpointError",
    "components_from_ldm",
    "detect_model_family",
    "file_sha256",
    "ldm_state_dict",
    "load_checkpoint",
    "load_diffusers_folder",
    "pad_text_layers",
    "read_state_dict",
    "save_checkpoint",
    "save_diffusers_folder",
]
