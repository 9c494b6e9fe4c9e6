"""Stand-ins for ComfyUI's MODEL, CLIP and VAE objects, holding an LDM-format state dict.

They keep ComfyUI's key layout where the pack sees it: `clip.get_sd()` uses `clip_l.*` names
and `vae.get_sd()` has no prefix; `model.model.state_dict_for_saving` renames both to the
single-file checkpoint layout, as ComfyUI's SD15 config does. LoRAs applied through the
stand-in `comfy.sd.load_lora_for_models` are recorded on clones, never applied.
"""

from __future__ import annotations

import torch

UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
COMFY_CLIP = "clip_l.transformer."


class SD15:
    """Named like ComfyUI's supported_models.SD15 (what the pack checks)."""

    unet_config = {"context_dim": 768, "model_channels": 320, "num_heads": 8, "num_head_channels": -1}


class SDXL:
    unet_config = {"context_dim": 2048, "model_channels": 320, "adm_in_channels": 2816}


class BaseModel:
    def __init__(self, unet: dict[str, torch.Tensor], config):
        self.unet, self.model_config = unet, config

    def state_dict_for_saving(self, clip_sd=None, vae_sd=None, clip_vision_sd=None) -> dict[str, torch.Tensor]:
        state = dict(self.unet)
        state.update({CLIP + k[len(COMFY_CLIP):]: v for k, v in (clip_sd or {}).items()})
        state.update({VAE + k: v for k, v in (vae_sd or {}).items()})
        return state


class ModelPatcher:
    def __init__(self, model: BaseModel, patches: list | None = None):
        self.model, self.patches = model, list(patches or [])

    def clone(self) -> "ModelPatcher":
        return ModelPatcher(self.model, self.patches)

    def with_lora(self, lora: dict, strength: float) -> "ModelPatcher":
        keys = sorted(k for k in lora if k.startswith("lora_unet_"))
        return ModelPatcher(self.model, self.patches + [(keys, strength)])


class Clip:
    def __init__(self, state: dict[str, torch.Tensor], patches: list | None = None):
        self.state, self.patches = state, list(patches or [])

    def get_sd(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_model(self) -> "Clip":
        return self

    def clone(self) -> "Clip":
        return Clip(self.state, self.patches)

    def with_lora(self, lora: dict, strength: float) -> "Clip":
        keys = sorted(k for k in lora if k.startswith("lora_te"))
        return Clip(self.state, self.patches + [(keys, strength)])


class Vae:
    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def get_sd(self) -> dict[str, torch.Tensor]:
        return dict(self.state)


def comfy_objects(ldm_state: dict[str, torch.Tensor], config=SD15) -> tuple[ModelPatcher, Clip, Vae]:
    """(MODEL, CLIP, VAE) stand-ins holding an LDM-format checkpoint's tensors."""
    unet = {k: v for k, v in ldm_state.items() if k.startswith(UNET)}
    clip = {COMFY_CLIP + k[len(CLIP):]: v for k, v in ldm_state.items() if k.startswith(CLIP)}
    vae = {k[len(VAE):]: v for k, v in ldm_state.items() if k.startswith(VAE)}
    return ModelPatcher(BaseModel(unet, config())), Clip(clip), Vae(vae)
