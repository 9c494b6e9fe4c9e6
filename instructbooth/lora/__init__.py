"""LoRA for SD1.5 components: trainable adapters, kohya-named states and files that ComfyUI's
stock LoraLoader reads, merging and stacking (details: `layers`).

Modules: `layers` (LoraLinear, inject / remove / merge / apply, `lora_merged`), `files`
(safetensors with kohya keys and metadata), `keys` (kohya key names of SD1.5 layers).
"""

from __future__ import annotations

from .layers import *  # noqa: F403 (the package is its main module's public names)
from .layers import __all__  # noqa: F401
