"""The Stable Diffusion 1.5 components every stage works on, and builders for them.

`SDComponents` is the one bundle passed between stages (personalize, RL, sampling,
demo). Configs for the full SD1.5 architecture ship in `configs/`; `tiny_*` and
`small_sd15_*` builders make seeded random models of the same family for tests,
benchmarks and the embedded demo. Nothing here touches the network.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

CONFIG_PACKAGE = f"{__package__}.configs"  # relative: the pack also imports us as <pack>.instructbooth


@dataclass
class SDComponents:
    """A text-to-image latent diffusion model split into its parts.

    `vae` may be None for pixel-space models (the embedded demo world); then
    `latent_scale` is 1 and "latents" are images folded into channels.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SDComponents":
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        return self

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder) if m is not None]

    def requires_grad_(self, flag: bool) -> "SDComponents":
        for module in self.modules():
            module.requires_grad_(flag)
        return self


def load_config(name: str) -> dict[str, Any]:
    """A shipped JSON config by stem, e.g. `load_config("sd15_unet")` (a fresh copy)."""
    return copy.deepcopy(_read_config(name))


@lru_cache(maxsize=None)
def _read_config(name: str) -> dict[str, Any]:
    path = resources.files(CONFIG_PACKAGE) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config named {name!r} in {CONFIG_PACKAGE}")
    return json.loads(path.read_text())


def load_tokenizer() -> CLIPTokenizer:
    """SD1.5's CLIP BPE tokenizer from the files shipped in the package (offline)."""
    folder = resources.files(CONFIG_PACKAGE) / "tokenizer"
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def make_noise_scheduler() -> DDPMScheduler:
    """SD1.5's training noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    return DDPMScheduler.from_config(_strip_meta(load_config("sd15_scheduler")))


def _strip_meta(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_config(_strip_meta(config))


def build_vae(config: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL.from_config(_strip_meta(config))


def build_text_encoder(config: dict[str, Any]) -> CLIPTextModel:
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    return CLIPTextModel(CLIPTextConfig(**fields))


def build_components(
    unet_config: dict[str, Any],
    vae_config: dict[str, Any] | None,
    text_config: dict[str, Any],
    seed: int = 0,
) -> SDComponents:
    """Randomly initialised components from configs, seeded and in eval mode."""
    torch.manual_seed(seed)
    parts = SDComponents(
        unet=build_unet(unet_config),
        vae=build_vae(vae_config) if vae_config is not None else None,
        text_encoder=build_text_encoder(text_config),
        tokenizer=load_tokenizer(),
        scheduler=make_noise_scheduler(),
    )
    for module in parts.modules():
        module.eval()
    return parts


def sd15_configs() -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) configs of the full SD1.5 architecture."""
    return load_config("sd15_unet"), load_config("sd15_vae"), load_config("sd15_text_encoder")


def tiny_configs() -> tuple[dict, dict, dict]:
    """A tiny model of SD1.5's family: two UNet levels (attention on the first), a
    two-level VAE and a 2-layer, 32-wide CLIP text encoder. Builds in well under a
    second; for unit tests."""
    unet, vae, text = sd15_configs()
    unet.update(
        sample_size=8,
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae.update(
        sample_size=32,
        block_out_channels=[16, 32],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1,
        norm_num_groups=8,
    )
    text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    return unet, vae, text


def small_sd15_configs() -> tuple[dict, dict, dict]:
    """SD1.5-shaped but small (about 150M parameters): one UNet level of 320 channels
    with one res block and attention, a 1-layer 768-wide CLIP, the full-size VAE.
    ComfyUI detects its LDM checkpoint as SD1.5 (model_channels 320, context 768)."""
    unet, vae, text = sd15_configs()
    unet.update(
        block_out_channels=[320],
        down_block_types=["CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D"],
        layers_per_block=1,
    )
    text.update(num_hidden_layers=1)
    return unet, vae, text


def tiny_components(seed: int = 0) -> SDComponents:
    return build_components(*tiny_configs(), seed=seed)


def small_sd15_components(seed: int = 0) -> SDComponents:
    return build_components(*small_sd15_configs(), seed=seed)
