"""Kohya LoRA key names for SD1.5, and the checks that keep foreign files out.

A kohya LoRA names each patched module once and stores three tensors under it:

    lora_unet_<diffusers UNet module path, "." -> "_">.lora_down.weight   [r, in(, k, k)]
    lora_unet_<...>.lora_up.weight                                       [out, r(, 1, 1)]
    lora_unet_<...>.alpha                                                scalar; scale = alpha / r
    lora_te_text_model_encoder_layers_<i>_<self_attn_q_proj|...|mlp_fc2>.<same suffixes>

These are the names ComfyUI's stock LoraLoader maps onto an SD1.5 model. Module names
contain no dots, so a key splits at its first dot into (module name, suffix).
Module names cannot be turned back into paths by string replacement ("to_out_0" vs
"ff_net_0_proj"), so lookups go through a map built from the model's real modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

UNET_PREFIX = "lora_unet_"
TEXT_PREFIX = "lora_te_"
TEXT_NAME_TEMPLATE = "lora_te_text_model_encoder_layers_{layer}_{sublayer}"
DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"
SUFFIXES = (DOWN, UP, ALPHA)

# A CLIP encoder-layer projection, under transformers 4 ("text_model.encoder...") or 5 ("encoder...").
_TEXT_PATH = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.(self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$")

# Signs that a file was made for another model family, with the explanation to show.
_FOREIGN_SIGNS = (
    (("lora_te1_", "lora_te2_"), "two text encoders (lora_te1_/lora_te2_): an SDXL LoRA"),
    (("conditioner.", "lora_conditioner_"), "conditioner keys: an SDXL LoRA"),
    (
        ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"),
        "LDM-style UNet names (input_blocks_*), as SDXL kohya LoRAs use; SD1.5 kohya LoRAs name "
        "diffusers modules (down_blocks_*)",
    ),
    (("lora_transformer_", "transformer.", "lora_te3_"), "transformer keys: a LoRA for a DiT model (SD3/Flux)"),
)
_FORMAT_HINTS = (
    ("lora_A", "PEFT keys (lora_A/lora_B)"),
    ("lora.down", "diffusers keys (lora.down/lora.up)"),
    ("hada_", "LoHa keys"),
    ("lokr_", "LoKr keys"),
    ("dora_scale", "DoRA keys"),
    ("lora_mid", "LoCon/Tucker keys (lora_mid)"),
)


class LoraError(ValueError):
    """A LoRA that does not fit: unknown or foreign keys, wrong shapes, bad files, misuse."""


def unet_module_name(path: str) -> str:
    """`down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return UNET_PREFIX + path.replace(".", "_")


def text_module_name(path: str) -> str | None:
    """Kohya name of a CLIP encoder-layer projection path, None for any other path."""
    match = _TEXT_PATH.search(path)
    if match is None:
        return None
    return TEXT_NAME_TEMPLATE.format(layer=match.group(1), sublayer=match.group(2).replace(".", "_"))


def patchable_modules(root: nn.Module, wrapper: type | None = None) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every nn.Linear / nn.Conv2d under `root`, in registration order.

    A `wrapper` module (an injected LoRA) stands for the layer it wraps: its path is
    yielded with its `.base`, and its own LoRA layers are not."""
    for name, child in root.named_children():
        if wrapper is not None and isinstance(child, wrapper):
            yield name, child.base
        elif isinstance(child, (nn.Linear, nn.Conv2d)):
            yield name, child
        else:
            for path, module in patchable_modules(child, wrapper):
                yield f"{name}.{path}", module


def kohya_module_map(unet: nn.Module, text_encoder: nn.Module, wrapper: type | None = None) -> dict[str, tuple[str, str]]:
    """Kohya module name -> (part, module path) for every module a LoRA may patch."""
    names: dict[str, tuple[str, str]] = {}
    for path, _ in patchable_modules(unet, wrapper):
        names[unet_module_name(path)] = ("unet", path)
    for path, _ in patchable_modules(text_encoder, wrapper):
        name = text_module_name(path)
        if name is not None:
            names[name] = ("text_encoder", path)
    return names


def split_key(key: str) -> tuple[str, str]:
    """`lora_unet_x.lora_up.weight` -> (`lora_unet_x`, `lora_up.weight`)."""
    module, _, suffix = key.partition(".")
    return module, suffix


def group_by_module(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {suffix: tensor}} of a checked kohya state (see `check_kohya_state`)."""
    check_kohya_state(state)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, suffix = split_key(key)
        groups.setdefault(module, {})[suffix] = tensor
    return groups


def check_kohya_state(state: Mapping[str, torch.Tensor]) -> None:
    """Raises LoraError unless `state` is an SD1.5 kohya LoRA: right family, known
    suffixes, and a down and an up weight for every module."""
    if not state:
        raise LoraError("the LoRA state is empty")
    refuse_foreign_family(state.keys())
    odd = [k for k in state if not k.startswith((UNET_PREFIX, TEXT_PREFIX)) or split_key(k)[1] not in SUFFIXES]
    if odd:
        raise LoraError(f"not an SD1.5 kohya LoRA: {len(odd)} keys of unknown form, e.g. {few_names(odd)}{_format_hint(odd)}")
    modules = {split_key(k)[0] for k in state}
    incomplete = sorted(m for m in modules if f"{m}.{DOWN}" not in state or f"{m}.{UP}" not in state)
    if incomplete:
        raise LoraError(f"{len(incomplete)} LoRA modules lack a lora_down or lora_up weight, e.g. {few_names(incomplete)}")


def refuse_foreign_family(keys: Iterable[str]) -> None:
    """Raises LoraError when the key names show a LoRA for SDXL, SD3/Flux or the like."""
    keys = list(keys)
    for prefixes, meaning in _FOREIGN_SIGNS:
        found = [k for k in keys if k.startswith(prefixes)]
        if found:
            raise LoraError(f"not an SD1.5 LoRA: {meaning}, e.g. {few_names(found)}")


def _format_hint(keys: list[str]) -> str:
    for marker, meaning in _FORMAT_HINTS:
        if any(marker in k for k in keys):
            return f"; these look like {meaning}, which this loader does not read"
    return ""


def few_names(items: Iterable[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
