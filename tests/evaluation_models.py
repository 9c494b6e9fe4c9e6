"""Tiny random CLIP and DINO models for the evaluation tests, built at test time (nothing downloaded).

`tiny_clip_folder` writes a transformers folder (config.json, model.safetensors, the shipped CLIP
tokenizer files, preprocessor_config.json); `tiny_dino_folder` a ViTModel folder with
facebook/dino-vits16's kind of preprocessor config (bilinear resize to the model size, ImageNet
mean/std). `original_dino_state` turns a ViTModel's weights into the original DINO key layout.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import torch

CLIP_TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
                 max_position_embeddings=77)
CLIP_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8)
DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=32,
            patch_size=8, layer_norm_eps=1e-6)


def tiny_clip_model(seed: int = 0, width: int = 32, heads: int = 4):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = {**CLIP_TEXT, "hidden_size": width, "num_attention_heads": heads}
    vision = {**CLIP_VISION, "hidden_size": width, "num_attention_heads": heads}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def tiny_clip_folder(folder: Path, seed: int = 0, width: int = 32, heads: int = 4) -> Path:
    from transformers import CLIPImageProcessor

    model = tiny_clip_model(seed, width, heads)
    model.save_pretrained(folder)
    tokenizer = resources.files("instructbooth") / "configs" / "tokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(str(tokenizer / name), folder / name)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def tiny_dino_model(seed: int = 1, width: int = 32, heads: int = 4):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(**{**DINO, "hidden_size": width, "num_attention_heads": heads})
    return ViTModel(config, add_pooling_layer=False).eval()


def tiny_dino_folder(folder: Path, seed: int = 1, width: int = 32, heads: int = 4) -> Path:
    from transformers import ViTImageProcessor

    tiny_dino_model(seed, width, heads).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def original_dino_state(model) -> dict[str, torch.Tensor]:
    """A transformers ViTModel's weights in facebookresearch/dino's key layout (fused qkv)."""
    from safetensors.torch import load_file
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # the saved (hub) key names, whatever transformers calls them
        model.save_pretrained(scratch)
        hub = load_file(str(Path(scratch) / "model.safetensors"))
    out = {"cls_token": hub["embeddings.cls_token"], "pos_embed": hub["embeddings.position_embeddings"],
           "patch_embed.proj.weight": hub["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hub["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": hub["layernorm.weight"], "norm.bias": hub["layernorm.bias"]}
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    for i in range(model.config.num_hidden_layers):
        new, old = f"encoder.layer.{i}.", f"blocks.{i}."
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                out[f"{old}{theirs}.{part}"] = hub[f"{new}{ours}.{part}"]
        for part in ("weight", "bias"):
            out[f"{old}attn.qkv.{part}"] = torch.cat([hub[f"{new}attention.attention.{n}.{part}"]
                                                       for n in ("query", "key", "value")])
    return out


def pictures(count: int, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    """[count, 3, H, W] in [0, 1] on the 8-bit grid (so any 8-bit path sees them unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, height, width), generator=generator).float() / 255
