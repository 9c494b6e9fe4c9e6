"""DINO image embeddings (the DINO subject-fidelity metric), as DreamBooth's evaluation takes them.

DreamBooth reports DINO as the mean pairwise cosine of ViT-S/16 DINO embeddings of generated
and real images; the embedding is the [CLS] token after the final layer norm, which is
transformers' `ViTModel(...).last_hidden_state[:, 0]` (and the output of the original DINO
model's forward). Weights: facebook/dino-vits16 as a transformers folder, or one file with
transformers keys or the original DINO keys (`dino_deitsmall16_pretrain.pth`: `blocks.0.attn.qkv`,
`pos_embed`, ...), converted here.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .image_processing import ImageProcessing, read_processor_config
from .image_embedder import ImageEmbedder
from .transformers_loading import build_from_state
from .weights import EvaluationWeightsError, WeightsSource, describe_keys, locate, read_state_dict

WHERE = ("put DINO ViT-S/16 (facebook/dino-vits16: config.json + model.safetensors, or the original "
         "dino_deitsmall16_pretrain.pth) in ComfyUI/models/evaluation/ or pass its path (--dino)")
CLS_KEY = "embeddings.cls_token"
ORIGINAL_CLS_KEY = "cls_token"
ORIGINAL_EPS = 1e-6  # the original DINO ViTs' LayerNorm epsilon


class DinoEmbedder(ImageEmbedder):
    """DINO for scoring: `reference_similarity` (the DINO metric); embeddings are the [CLS] token."""

    kind = "dino"

    def __init__(self, model, processing: ImageProcessing, name: str = "DINO", batch_size: int = 16):
        super().__init__(model, processing, name, batch_size)

    @property
    def embedding_size(self) -> int:
        return self.model.config.hidden_size

    def _embed_pixels(self, pixels: Tensor) -> Tensor:
        hidden = self.model(pixel_values=pixels).last_hidden_state  # [b, 1 + patches, D], final norm applied
        return hidden[:, 0]


def load_dino(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              batch_size: int = 16) -> DinoEmbedder:
    """DINO from a transformers folder or one weights file; offline."""
    source = locate(path, "DINO", WHERE)
    raw = read_state_dict(source)
    state = vit_state(raw, source.name)
    config = vit_config(source, state, original=is_original_dino(raw))
    from transformers import ViTModel

    model = build_from_state(ViTModel, config, state, source.name, "DINO ViT", ignore_unexpected=("pooler.",),
                             add_pooling_layer=False).to(device, dtype)
    fallback = ImageProcessing.dino_default(int(config.image_size))
    processor = read_processor_config(source.folder) if source.config is not None else None
    processing = ImageProcessing.from_config(processor, fallback) if processor else fallback
    return DinoEmbedder(model, processing, source.name, batch_size)


def is_dino_state(state: dict[str, Tensor]) -> bool:
    keys = set(state)
    return bool({CLS_KEY, "vit." + CLS_KEY, ORIGINAL_CLS_KEY} & keys)


def is_original_dino(state: dict[str, Tensor]) -> bool:
    return ORIGINAL_CLS_KEY in state and "blocks.0.attn.qkv.weight" in state


def vit_state(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """transformers ViT keys (without a `vit.` prefix and classifier head), from either layout."""
    if "vit." + CLS_KEY in state:
        state = {k[len("vit."):]: v for k, v in state.items() if k.startswith("vit.")}
    if is_original_dino(state):
        return from_original_dino(state)
    if CLS_KEY not in state:
        raise EvaluationWeightsError(f"{name} is not a DINO ViT (its keys: {describe_keys(state)}; expected "
                                     f"{CLS_KEY} or the original {ORIGINAL_CLS_KEY}, blocks.*); {WHERE}")
    return state


def from_original_dino(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The original DINO ViT's keys (facebookresearch/dino) -> transformers ViTModel's; the fused
    qkv projection is split into query, key and value."""
    out = {
        CLS_KEY: state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for block in sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}):
        out.update(_original_block(state, block))
    return out


def _original_block(state: dict[str, Tensor], block: int) -> dict[str, Tensor]:
    old, new = f"blocks.{block}.", f"encoder.layer.{block}."
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {f"{new}{target}.{p}": state[f"{old}{source}.{p}"] for source, target in renames.items()
           for p in ("weight", "bias")}
    for part in ("weight", "bias"):
        query, key, value = state[f"{old}attn.qkv.{part}"].chunk(3, dim=0)
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            out[f"{new}attention.attention.{name}.{part}"] = tensor.contiguous()
    return out


def vit_config(source: WeightsSource, state: dict[str, Tensor], original: bool = False):
    """The folder's / sidecar config, or one inferred from the shapes (heads = width / 64, as in
    every DINO ViT; LayerNorm eps 1e-6 for original DINO files, transformers' default otherwise)."""
    from transformers import ViTConfig

    if source.config is not None:
        kind = source.config.get("model_type", "vit")
        if kind != "vit":
            raise EvaluationWeightsError(f"the config beside {source.name} describes a {kind!r} model; DreamBooth's "
                                         f"DINO metric uses DINO v1 ViT-S/16 (model_type 'vit'); {WHERE}")
        return ViTConfig.from_dict(source.config)
    width = int(state[CLS_KEY].shape[-1])
    _, _, patch, _ = state["embeddings.patch_embeddings.projection.weight"].shape
    positions = int(state["embeddings.position_embeddings"].shape[1]) - 1
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    extra = {"layer_norm_eps": ORIGINAL_EPS} if original else {}
    return ViTConfig(hidden_size=width, num_hidden_layers=len(layers), num_attention_heads=max(1, width // 64),
                     intermediate_size=int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
                     image_size=int(round(positions**0.5)) * int(patch), patch_size=int(patch),
                     qkv_bias="encoder.layer.0.attention.attention.query.bias" in state, **extra)

