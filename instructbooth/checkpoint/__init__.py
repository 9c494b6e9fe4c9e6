"""SD1.5 components from LDM single-file checkpoints, state dicts and diffusers folders, offline,
and back (details: `convert`).

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
