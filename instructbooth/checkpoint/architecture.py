"""What an LDM-format state dict is, and the SD1.5-family configs its shapes imply.

`detect_model_family` names a state dict's kind (SD1.5, SDXL, SD2, LoRA, lone VAE...)
so callers can refuse what is not SD1.5 with advice. `infer_*_config` read the
architecture from key names and tensor shapes, as ComfyUI does: reduced test models,
the 9-channel inpainting UNet and fine-tunes all load through the same path. The few
settings no tensor shape reveals (attention heads, GroupNorm groups, ...) come from
`ArchitectureHints`, whose defaults are SD1.5's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from ..components import SDComponents, load_config
from .keys import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

HINTS_METADATA_KEY = "instructbooth.architecture_hints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as SD1.5, with what it is and what to do."""


@dataclass(frozen=True)
class ArchitectureHints:
    """Settings that change a model's outputs but no tensor's shape; defaults are SD1.5's.

    `save_checkpoint` stores them in the file's metadata and `load_checkpoint` reads them
    back, so reduced test models round-trip exactly.
    """

    unet_attention_heads: int = 8  # heads of every UNet transformer (diffusers' legacy `attention_head_dim`)
    unet_norm_groups: int = 32  # GroupNorm groups in the UNet
    unet_sample_size: int = 64  # default latent side (pixels / 8); metadata only
    vae_norm_groups: int = 32  # GroupNorm groups in the VAE
    vae_sample_size: int = 512  # default image side in pixels; metadata only
    vae_scaling_factor: float = 0.18215  # latents = scale * VAE posterior
    text_attention_heads: int | None = None  # None: hidden_size // 64 (CLIP ViT-L/14: 12)
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction"

    def to_metadata(self) -> dict[str, str]:
        return {HINTS_METADATA_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str] | None) -> "ArchitectureHints":
        """Hints stored by `save_checkpoint`, else the SD1.5 defaults."""
        text = (metadata or {}).get(HINTS_METADATA_KEY)
        if text is None:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    @classmethod
    def from_components(cls, parts: SDComponents) -> "ArchitectureHints":
        unet, text = parts.unet.config, parts.text_encoder.config
        heads = unet.attention_head_dim if unet.num_attention_heads is None else unet.num_attention_heads
        if not isinstance(heads, int):
            raise CheckpointError(f"per-level UNet attention heads {heads} are not supported; use one number")
        vae = parts.vae.config if parts.vae is not None else None
        return cls(
            unet_attention_heads=heads,
            unet_norm_groups=unet.norm_num_groups,
            unet_sample_size=unet.sample_size,
            vae_norm_groups=vae.norm_num_groups if vae else 32,
            vae_sample_size=vae.sample_size if vae else 512,
            vae_scaling_factor=float(vae.scaling_factor) if vae else 0.18215,
            text_attention_heads=text.num_attention_heads,
            prediction_type=parts.scheduler.config.prediction_type,
        )


# ---------------------------------------------------------------------------- families

FAMILY_ADVICE = {
    "sd15": "a Stable Diffusion 1.x checkpoint",
    "sdxl": "an SDXL checkpoint (two text encoders, 2048-wide context); InstructBooth trains "
    "Stable Diffusion 1.5 only: choose an SD1.5 checkpoint such as v1-5-pruned-emaonly.safetensors",
    "sd2": "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, 1024-wide context); InstructBooth "
    "trains Stable Diffusion 1.5 only: choose an SD1.5 checkpoint",
    "lora": "a LoRA file, not a base model; load an SD1.5 base checkpoint here and apply the LoRA "
    "with a LoRA loader",
    "vae": "a standalone VAE, not a full model; load a full SD1.5 checkpoint (UNet, VAE and text encoder)",
    "diffusers": "a single diffusers-format model file; pass the diffusers folder that holds unet/, vae/ "
    "and text_encoder/ instead",
    "empty": "an empty state dict; the file holds no tensors",
    "unknown": "an unknown model, not a Stable Diffusion 1.5 checkpoint (it has no model.diffusion_model.* "
    "UNet weights)",
}

_LORA_MARKERS = ("lora_unet_", "lora_te", "lycoris_")
_LORA_PARTS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".hada_w1")
_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def detect_model_family(state_dict: Mapping[str, Any]) -> str:
    """One of FAMILY_ADVICE's names: "sd15", "sdxl", "sd2", "lora", "vae", "diffusers", "empty", "unknown"."""
    keys = list(state_dict)
    if not keys:
        return "empty"
    if any(k.startswith(_LORA_MARKERS) or any(p in k for p in _LORA_PARTS) for k in keys):
        return "lora"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    context = _context_dim(state_dict)
    if context == 2048 or UNET_PREFIX + "label_emb.0.0.weight" in state_dict:
        return "sdxl"
    if context == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if UNET_PREFIX + "input_blocks.0.0.weight" in state_dict:
        return "sd15"
    if all(k.startswith(_VAE_ROOTS) or k.startswith(VAE_PREFIX) for k in keys):
        return "vae"
    if "conv_in.weight" in state_dict and any(k.startswith("down_blocks.") for k in keys):
        return "diffusers"
    return "unknown"


def _context_dim(state_dict: Mapping[str, Any]) -> int | None:
    """Width of the text features the UNet cross-attends to, from any attn2.to_k weight."""
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(tensor.shape[1])
    return None


def require_sd15(state_dict: Mapping[str, Any], source: str) -> None:
    family = detect_model_family(state_dict)
    if family != "sd15":
        examples = ", ".join(list(state_dict)[:3])
        found = f" (first keys: {examples})" if examples else ""
        raise CheckpointError(f"{source} cannot be loaded as SD1.5: it looks like {FAMILY_ADVICE[family]}{found}")


# ---------------------------------------------------------------------------- inference


def infer_unet_config(unet: Mapping[str, torch.Tensor], hints: ArchitectureHints) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config from LDM UNet keys (prefix already stripped)."""
    conv_in = _need(unet, "input_blocks.0.0.weight", UNET_PREFIX)
    levels = _down_levels(unet)
    per_block = len(levels[0])
    if any(len(level) != per_block for level in levels):
        raise CheckpointError(f"UNet levels have different numbers of res blocks {[len(x) for x in levels]}")
    channels = [level[0][0] for level in levels]
    down_depths = [_uniform([depth for _, depth in level], "down level") for level in levels]
    up_depths = _up_depths(unet, len(levels), per_block)
    mid_depth = _transformer_depth(unet, "middle_block.1.")
    if mid_depth == 0:
        raise CheckpointError("the UNet's middle block has no transformer; SD1.5-family UNets have one")
    depth = _uniform([d for d in down_depths + up_depths + [mid_depth] if d], "UNet transformer")
    _check_time_embedding(unet, channels[0])
    _check_heads(channels, down_depths, hints.unet_attention_heads)
    _check_groups(channels, hints.unet_norm_groups, "unet_norm_groups")
    mid_proj = _need(unet, "middle_block.1.proj_in.weight", UNET_PREFIX)
    config = load_config("sd15_unet")
    config.update(
        sample_size=hints.unet_sample_size,
        in_channels=int(conv_in.shape[1]),
        out_channels=int(_need(unet, "out.2.weight", UNET_PREFIX).shape[0]),
        block_out_channels=channels,
        layers_per_block=per_block,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in down_depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in up_depths],
        transformer_layers_per_block=depth,
        cross_attention_dim=int(_need(unet, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", UNET_PREFIX).shape[1]),
        use_linear_projection=mid_proj.ndim == 2,
        attention_head_dim=hints.unet_attention_heads,
        norm_num_groups=hints.unet_norm_groups,
    )
    return config


def _down_levels(unet: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
    """Per down level, (out channels, transformer depth) of each res block."""
    levels: list[list[tuple[int, int]]] = [[]]
    for index in _block_indices(unet, "input_blocks")[1:]:
        if f"input_blocks.{index}.0.op.weight" in unet:
            levels.append([])
            continue
        out = unet.get(f"input_blocks.{index}.0.out_layers.3.weight")
        if out is None:
            raise CheckpointError(f"unrecognised UNet block {UNET_PREFIX}input_blocks.{index}")
        levels[-1].append((int(out.shape[0]), _transformer_depth(unet, f"input_blocks.{index}.1.")))
    if not levels[-1]:
        raise CheckpointError("the UNet's last down level has no res blocks")
    for level in levels:
        _uniform([c for c, _ in level], "down level channel")
    return levels


def _up_depths(unet: Mapping[str, torch.Tensor], num_levels: int, per_block: int) -> list[int]:
    count = len(_block_indices(unet, "output_blocks"))
    span = per_block + 1
    if count != num_levels * span:
        raise CheckpointError(f"the UNet has {count} output blocks; {num_levels} levels of {span} expected")
    depths = []
    for level in range(num_levels):
        found = [_transformer_depth(unet, f"output_blocks.{level * span + j}.1.") for j in range(span)]
        depths.append(_uniform(found, "up level"))
    return depths


def _block_indices(unet: Mapping[str, torch.Tensor], name: str) -> list[int]:
    pattern = re.compile(rf"^{name}\.(\d+)\.")
    found = {int(m.group(1)) for key in unet if (m := pattern.match(key))}
    if found != set(range(len(found))):
        raise CheckpointError(f"the UNet's {name} are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return sorted(found)


def _transformer_depth(unet: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of transformer blocks in the spatial transformer at `prefix` (0: none)."""
    if prefix + "proj_in.weight" not in unet:
        return 0
    pattern = re.compile(rf"^{re.escape(prefix)}transformer_blocks\.(\d+)\.")
    return len({m.group(1) for key in unet if (m := pattern.match(key))})


def _check_time_embedding(unet: Mapping[str, torch.Tensor], base: int) -> None:
    shape = tuple(_need(unet, "time_embed.0.weight", UNET_PREFIX).shape)
    if shape != (4 * base, base):
        raise CheckpointError(f"time embedding of shape {shape}; SD1.5-family UNets use ({4 * base}, {base})")


def _check_heads(channels: list[int], depths: list[int], heads: int) -> None:
    if heads < 1:
        raise CheckpointError(f"{heads} attention heads: an SD1.5 UNet has 8; pass ArchitectureHints("
                              "unet_attention_heads=8) or fix the checkpoint's metadata")
    for width, depth in zip(channels, depths):
        if depth and width % heads:
            raise CheckpointError(
                f"{width} UNet channels do not split into {heads} attention heads; "
                "pass ArchitectureHints(unet_attention_heads=...)"
            )


def _check_groups(channels: list[int], groups: int, hint: str) -> None:
    if any(width % groups for width in channels):
        raise CheckpointError(
            f"channels {channels} do not split into {groups} GroupNorm groups; pass ArchitectureHints({hint}=...)"
        )


def infer_vae_config(vae: Mapping[str, torch.Tensor], hints: ArchitectureHints) -> dict[str, Any]:
    """diffusers AutoencoderKL config from LDM VAE keys (prefix already stripped)."""
    channels = []
    while f"encoder.down.{len(channels)}.block.0.conv1.weight" in vae:
        channels.append(int(vae[f"encoder.down.{len(channels)}.block.0.conv1.weight"].shape[0]))
    if not channels:
        raise CheckpointError(f"no VAE encoder blocks ({VAE_PREFIX}encoder.down.0.block.0.conv1.weight missing)")
    per_block = len({k.split(".")[4] for k in vae if k.startswith("encoder.down.0.block.")})
    _check_groups(channels, hints.vae_norm_groups, "vae_norm_groups")
    config = load_config("sd15_vae")
    config.update(
        in_channels=int(_need(vae, "encoder.conv_in.weight", VAE_PREFIX).shape[1]),
        out_channels=int(_need(vae, "decoder.conv_out.weight", VAE_PREFIX).shape[0]),
        latent_channels=int(_need(vae, "decoder.conv_in.weight", VAE_PREFIX).shape[1]),
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=per_block,
        norm_num_groups=hints.vae_norm_groups,
        sample_size=hints.vae_sample_size,
        scaling_factor=hints.vae_scaling_factor,
        use_quant_conv="quant_conv.weight" in vae,
        use_post_quant_conv="post_quant_conv.weight" in vae,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in vae,
    )
    return config


def infer_text_config(text: Mapping[str, torch.Tensor], hints: ArchitectureHints) -> dict[str, Any]:
    """transformers CLIPTextConfig fields from LDM text-encoder keys (prefix already stripped)."""
    vocab, width = _need(text, "embeddings.token_embedding.weight", TEXT_PREFIX).shape
    layers = len({k.split(".")[2] for k in text if k.startswith("encoder.layers.")})
    heads = hints.text_attention_heads or width // 64
    if heads < 1 or width % heads:
        raise CheckpointError(
            f"a {width}-wide text encoder does not split into {heads} heads; "
            "pass ArchitectureHints(text_attention_heads=...)"
        )
    config = load_config("sd15_text_encoder")
    config.update(
        vocab_size=int(vocab),
        hidden_size=int(width),
        projection_dim=int(width),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=int(_need(text, "encoder.layers.0.mlp.fc1.weight", TEXT_PREFIX).shape[0]),
        max_position_embeddings=int(_need(text, "embeddings.position_embedding.weight", TEXT_PREFIX).shape[0]),
    )
    return config


def _need(weights: Mapping[str, torch.Tensor], key: str, prefix: str) -> torch.Tensor:
    if key not in weights:
        raise CheckpointError(f"missing {prefix}{key}, which every SD1.5-family checkpoint has")
    return weights[key]


def _uniform(values: list[int], what: str) -> int:
    if len(set(values)) > 1:
        raise CheckpointError(f"{what} settings differ ({values}); only uniform ones are supported")
    return values[0] if values else 0
