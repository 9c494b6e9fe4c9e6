"""ImageReward's dimensions and settings as frozen dataclasses.

Three ways to get a config, all giving the same type:
- `ImageRewardConfig.official()`: ImageReward v1.0, read from the shipped
  `configs/imagereward/imagereward.json`;
- `ImageRewardConfig.from_dict(d)` / `from_json(path)`: our format or the reference
  package's (`vision` with `embed_dim`..., `med_config`, `mean`, `std`);
- `infer_config(state_dict)`: the sizes read off the weight shapes (heads from a 64-wide
  head, the other settings from the official config).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

import torch

from ...components import CONFIG_PACKAGE

HEAD_DIM = 64  # width of one attention head in both real BLIP towers; used to infer head counts


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ViT: pre-norm blocks, fused qkv, exact GELU, a final LayerNorm on all tokens."""

    image_size: int = 224  # side of the square input in pixels
    patch_size: int = 16  # side of one patch in pixels; tokens = (image_size / patch_size)^2 + 1
    channels: int = 3  # input channels (RGB)
    width: int = 1024  # token width (the reference's embed_dim)
    depth: int = 24  # number of transformer blocks
    heads: int = 16  # attention heads per block
    mlp_width: int = 4096  # hidden width of each block's MLP
    layer_norm_eps: float = 1e-6  # LayerNorm epsilon (BLIP uses 1e-6, not torch's 1e-5)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class TextConfig:
    """BLIP's BERT "med" encoder: post-norm layers, self- then cross-attention to image tokens."""

    width: int = 768  # hidden size
    depth: int = 12  # number of layers, each with cross-attention
    heads: int = 12  # attention heads (self and cross)
    mlp_width: int = 3072  # intermediate size of each layer's MLP
    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    max_positions: int = 512  # rows of the absolute position table
    encoder_width: int = 1024  # width of the image tokens that cross-attention reads
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's)


@dataclass(frozen=True)
class ImageRewardConfig:
    """Everything that fixes ImageReward's numbers, apart from the weights."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    head_widths: tuple[int, ...] = (1024, 128, 64, 16, 1)  # MLP widths after the text feature
    head_dropouts: tuple[float, ...] = (0.2, 0.2, 0.1)  # dropout after the first hidden layers
    score_mean: float = 0.16717362830052426  # score = (mlp(feature) - score_mean) / score_std
    score_std: float = 1.0333394966054072
    max_length: int = 35  # prompt tokens, [CLS] and [SEP] included; longer prompts are cut

    @staticmethod
    def official() -> "ImageRewardConfig":
        """ImageReward v1.0 as shipped in `configs/imagereward/imagereward.json`."""
        return ImageRewardConfig.from_dict(shipped_settings())

    @staticmethod
    def from_json(path: str | os.PathLike) -> "ImageRewardConfig":
        with open(path, encoding="utf-8") as handle:
            return ImageRewardConfig.from_dict(json.load(handle))

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "ImageRewardConfig":
        """Reads our format (`vision`, `text`, ...) or the reference's (`vision`, `med_config`)."""
        if "med_config" in data:
            return _from_reference_dict(data)
        if "text" not in data or "vision" not in data:
            raise ValueError(
                f"not an ImageReward config: expected keys 'vision' and 'text' (ours) or "
                f"'vision' and 'med_config' (the reference package's); found {sorted(data)}"
            )
        settings = _known_fields(ImageRewardConfig, data)
        settings.update(
            vision=VisionConfig(**_known_fields(VisionConfig, data["vision"])),
            text=TextConfig(**_known_fields(TextConfig, data["text"])),
        )
        for name in ("head_widths", "head_dropouts"):
            if name in settings:
                settings[name] = tuple(settings[name])
        return ImageRewardConfig(**settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def shipped_settings() -> dict[str, Any]:
    """The JSON settings that ship with the package (model sizes and tokenizer files)."""
    text = resources.files(CONFIG_PACKAGE).joinpath("imagereward/imagereward.json").read_text("utf-8")
    return json.loads(text)


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls`, each checked against its field's type
    (a config.json with "width": "1024" is an error naming the key, not a TypeError later)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"an ImageReward config section must be a JSON object, got {type(data).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    known = {k: v for k, v in data.items() if k in fields}
    for key, value in known.items():
        wanted = _kind(fields[key].type)
        if wanted is not None and not _fits(value, wanted):
            raise ValueError(f"ImageReward config: {key!r} must be {wanted.__name__}, got {value!r}; "
                             "fix the config JSON (numbers without quotes)")
    return known


def _kind(annotation: Any) -> type | None:
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text == name or text == f"<class '{name}'>":
            return kind
    return None


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _from_reference_dict(data: Mapping[str, Any]) -> ImageRewardConfig:
    vit, med = data["vision"], data["med_config"]
    width = vit["embed_dim"]
    vision = VisionConfig(
        image_size=vit.get("img_size", 224),
        patch_size=vit.get("patch_size", 16),
        width=width,
        depth=vit["depth"],
        heads=vit["num_heads"],
        mlp_width=int(width * vit.get("mlp_ratio", 4.0)),
    )
    text = TextConfig(
        width=med["hidden_size"],
        depth=med["num_hidden_layers"],
        heads=med["num_attention_heads"],
        mlp_width=med["intermediate_size"],
        vocab_size=med["vocab_size"],
        max_positions=med.get("max_position_embeddings", 512),
        encoder_width=med.get("encoder_width", width),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
    )
    official = ImageRewardConfig()
    return ImageRewardConfig(
        vision=vision,
        text=text,
        score_mean=data.get("mean", official.score_mean),
        score_std=data.get("std", official.score_std),
    )


def infer_config(
    state_dict: Mapping[str, torch.Tensor], like: ImageRewardConfig | None = None
) -> ImageRewardConfig:
    """Reads the sizes off an ImageReward state dict with the official key names.

    Head counts cannot be seen in the shapes: they come from `like` when its widths match,
    else from a 64-wide head (as in ViT-L and BERT-base). Settings that are not sizes
    (epsilons, dropouts, score mean and std, max_length) come from `like` (default: official).
    """
    like = like or ImageRewardConfig()
    vision = _infer_vision(state_dict, like.vision)
    text = _infer_text(state_dict, like.text)
    head_widths = tuple(w.shape[0] for _, w in _head_linears(state_dict))
    return dataclasses.replace(like, vision=vision, text=text, head_widths=head_widths)


def _infer_vision(sd: Mapping[str, torch.Tensor], like: VisionConfig) -> VisionConfig:
    prefix = "blip.visual_encoder."
    width, channels, patch, _ = sd[prefix + "patch_embed.proj.weight"].shape
    tokens = sd[prefix + "pos_embed"].shape[1]
    side = round((tokens - 1) ** 0.5)
    return dataclasses.replace(
        like,
        image_size=side * patch,
        patch_size=patch,
        channels=channels,
        width=width,
        depth=_count_layers(sd, prefix + "blocks."),
        heads=_heads(width, like.width, like.heads, "vision"),
        mlp_width=sd[prefix + "blocks.0.mlp.fc1.weight"].shape[0],
    )


def _infer_text(sd: Mapping[str, torch.Tensor], like: TextConfig) -> TextConfig:
    prefix = "blip.text_encoder."
    vocab, width = sd[prefix + "embeddings.word_embeddings.weight"].shape
    return dataclasses.replace(
        like,
        width=width,
        depth=_count_layers(sd, prefix + "encoder.layer."),
        heads=_heads(width, like.width, like.heads, "text"),
        mlp_width=sd[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        vocab_size=vocab,
        max_positions=sd[prefix + "embeddings.position_embeddings.weight"].shape[0],
        encoder_width=sd[prefix + "encoder.layer.0.crossattention.self.key.weight"].shape[1],
    )


def _heads(width: int, like_width: int, like_heads: int, tower: str) -> int:
    if width == like_width:
        return like_heads
    if width % HEAD_DIM:
        raise ValueError(
            f"cannot infer the number of {tower} attention heads for width {width} (not a multiple "
            f"of {HEAD_DIM}); give the model's config (config=ImageRewardConfig.from_json(path), or --config path)"
        )
    return width // HEAD_DIM


def _count_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _head_linears(sd: Mapping[str, torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    """(index, weight) of the MLP head's linear layers, in order."""
    found = []
    for key, value in sd.items():
        if key.startswith("mlp.layers.") and key.endswith(".weight"):
            found.append((int(key.split(".")[2]), value))
    return sorted(found, key=lambda item: item[0])
