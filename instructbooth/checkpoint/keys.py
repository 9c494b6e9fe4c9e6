"""Parameter names of SD1.5 weights: diffusers/transformers names -> LDM single-file names.

Every parameter of a diffusers `UNet2DConditionModel`, `AutoencoderKL` and a transformers
`CLIPTextModel` has exactly one name in the LDM layout (the original CompVis checkpoint,
which is also what ComfyUI's MODEL/CLIP/VAE hold). The maps here are built from a model's
own `state_dict()` keys plus the two config facts that decide block numbering, so
inverting a map gives the other direction. Only names live here; tensor shapes (LDM keeps
some linear layers as 1x1 convolutions) are adapted by `checkpoint.py`.

LDM UNet numbering, with L = layers_per_block:
  input_blocks.0            conv_in
  input_blocks.1+i*(L+1)+j  down level i, res block j (.0) and its transformer (.1)
  input_blocks.(i+1)*(L+1)  down level i's downsampler (.0.op)
  output_blocks.i*(L+1)+j   up level i (deepest first), res block j (.0), transformer (.1),
                            upsampler after the last block (.1, or .2 behind a transformer)
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")

_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$")

# LDM names of VAE attention weights stored as 1x1 convolutions (diffusers: Linear).
VAE_CONV_LINEAR = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")


class UnmappedKeyError(KeyError):
    """A diffusers/transformers parameter name that has no LDM counterpart."""


def swap_prefix(name: str, table: dict[str, str]) -> str | None:
    """`name` with its leading dotted prefix replaced per `table`, or None if none matches."""
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


def unet_key_map(keys: Iterable[str], layers_per_block: int, up_attention: Sequence[bool]) -> dict[str, str]:
    """diffusers UNet name -> full LDM name. `up_attention[i]`: up block i has transformers."""
    return {key: UNET_PREFIX + _unet_name(key, layers_per_block, up_attention) for key in keys}


def _unet_name(key: str, per_block: int, up_attention: Sequence[bool]) -> str:
    top = swap_prefix(key, _UNET_TOP)
    if top is not None:
        return top
    if key.startswith("mid_block."):
        kind, index, rest = key.split(".", 3)[1:]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * int(index)}.{_renamed(rest, _UNET_RESNET, key)}"
    match = _UNET_BLOCK.match(key)
    if match is None:
        raise UnmappedKeyError(f"no LDM name for UNet parameter {key!r}")
    side, level, kind, index, rest = match.groups()
    level, index, span = int(level), int(index), per_block + 1
    if side == "down":
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * span}.0.{rest.replace('conv.', 'op.', 1)}"
        block = f"input_blocks.{1 + level * span + index}"
    else:
        if kind == "upsamplers":
            slot = 2 if up_attention[level] else 1
            return f"output_blocks.{level * span + per_block}.{slot}.{rest}"
        block = f"output_blocks.{level * span + index}"
    if kind == "attentions":
        return f"{block}.1.{rest}"
    return f"{block}.0.{_renamed(rest, _UNET_RESNET, key)}"


def _renamed(name: str, table: dict[str, str], key: str) -> str:
    renamed = swap_prefix(name, table)
    if renamed is None:
        raise UnmappedKeyError(f"no LDM name for parameter {key!r}")
    return renamed


def vae_key_map(keys: Iterable[str], num_levels: int) -> dict[str, str]:
    """diffusers VAE name -> full LDM name. LDM numbers decoder levels from the bottom."""
    return {key: VAE_PREFIX + _vae_name(key, num_levels) for key in keys}


def _vae_name(key: str, num_levels: int) -> str:
    half, _, rest = key.partition(".")
    if half not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    if rest.startswith("mid_block."):
        kind, index, param = rest.split(".", 3)[1:]
        if kind == "attentions":
            return f"{half}.mid.attn_1.{_renamed(param, _VAE_ATTENTION, key)}"
        return f"{half}.mid.block_{int(index) + 1}.{swap_prefix(param, _VAE_RESNET) or param}"
    match = _VAE_BLOCK.match(key)
    if match is None:
        return f"{half}.{swap_prefix(rest, _VAE_TOP) or rest}"
    _, side, level, kind, index, param = match.groups()
    level = int(level) if side == "down" else num_levels - 1 - int(level)
    block = f"{half}.{side}.{level}"
    if kind == "resnets":
        return f"{block}.block.{index}.{swap_prefix(param, _VAE_RESNET) or param}"
    sampler = "downsample" if kind == "downsamplers" else "upsample"
    return f"{block}.{sampler}.{param}"


def text_key_map(keys: Iterable[str]) -> dict[str, str]:
    """transformers CLIPTextModel name -> full LDM name (same tail, LDM prefix)."""
    return {key: TEXT_PREFIX + key.removeprefix("text_model.") for key in keys}
