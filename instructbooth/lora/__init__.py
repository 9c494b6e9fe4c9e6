"""LoRA for SD1.5 components: trainable adapters, kohya-named states and files that ComfyUI's
stock LoraLoader reads, merging and stacking (details: `layers`).

Modules: `layers` (LoraLinear, inject / remove / merge / apply, `lora_merged`), `files`
(safetensors with kohya keys and metadata), `keys` (kohya key names of SD1.5 layers).
"""

from __future__ import annotations

from .layers import (
    LoraConfig,
    LoraError,
    LoraLinear,
    LoraMetadata,
    TEXT_ATTENTION_TARGETS,
    TEXT_MLP_TARGETS,
    UNET_ALL_TARGETS,
    UNET_ATTENTION_TARGETS,
    UNET_EXTRA_TARGETS,
    UNET_RESNET_TARGETS,
    apply_lora,
    find_unknown_modules,
    inject_lora,
    load_lora,
    load_lora_state,
    lora_disabled,
    lora_merged,
    lora_parameters,
    lora_state_dict,
    merge_lora_states,
    read_lora_metadata,
    remove_lora,
    save_lora,
)

__all__ = [
    "LoraConfig",
    "LoraError",
    "LoraLinear",
    "LoraMetadata",
    "TEXT_ATTENTION_TARGETS",
    "TEXT_MLP_TARGETS",
    "UNET_ALL_TARGETS",
    "UNET_ATTENTION_TARGETS",
    "UNET_EXTRA_TARGETS",
    "UNET_RESNET_TARGETS",
    "apply_lora",
    "find_unknown_modules",
    "inject_lora",
    "load_lora",
    "load_lora_state",
    "lora_disabled",
    "lora_merged",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora_states",
    "read_lora_metadata",
    "remove_lora",
    "save_lora",
]
