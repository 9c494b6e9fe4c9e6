"""Frozen image-text features for a learned reward, and their cache on disk.

A backbone turns images and, per image, N candidate prompts into features [B, N, F]:

    features, valid = backbone.pair_features(images, candidates)

images: a tensor [B, 3, H, W] in [0, 1] or B PIL images; candidates: B lists of prompts (the
true prompt first, perturbed ones after; lists may be shorter than the longest, `valid` marks
the real entries). `backbone.identity` names its weights ("imagereward:<fingerprint>"): a
learned reward records it and refuses any other backbone.

`ImageRewardBackbone` uses the ImageReward model the pack already loads: the image through
its ViT once, each candidate prompt through its cross-attending text encoder, the token-0
feature (what ImageReward's own MLP head reads), F = the text width (768 for the official
model). The demo world has its own backbone (instructbooth/demo/reward_features.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn

from ..training import sampled_fingerprint
from ..files import write_safetensors
from ..rewards.image_reward.preprocess import preprocess_exact, preprocess_pil_batch

  # evenly spaced values per tensor that enter a weights fingerprint


class Backbone(Protocol):
    kind: str  # "imagereward", "demo", ...: how a loader rebuilds it
    identity: str  # kind + fingerprint of its weights
    feature_size: int  # F
    image_feature_size: int  # 0: joint features; > 0: dual (see head.py)
    module: nn.Module  # its weights (device, fingerprints)

    def pair_features(self, images: Tensor | Sequence[Image.Image],
                      candidates: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """-> features [B, N, F] float32 on the CPU, valid [B, N] bool."""
        ...


def weights_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """The first 16 hex digits of `training.sampled_fingerprint` (names, shapes, dtypes and evenly
    spaced values of every tensor): any fine-tune changes it, and a 1.8 GB model is read fast."""
    return sampled_fingerprint(tensors)[:16]


def candidate_grid(candidates: Sequence[Sequence[str]]) -> tuple[list[list[str]], Tensor]:
    """Ragged candidate lists -> a full [B, N] grid (gaps filled with the true prompt) and valid [B, N]."""
    if any(len(c) == 0 for c in candidates):
        raise ValueError("every image needs at least its own prompt among the candidates")
    width = max((len(c) for c in candidates), default=1)
    grid = [list(c) + [c[0]] * (width - len(c)) for c in candidates]
    valid = torch.tensor([[j < len(c) for j in range(width)] for c in candidates], dtype=torch.bool)
    return grid, valid.reshape(len(candidates), width)


class ImageRewardBackbone:
    """ImageReward's token-0 image-text feature (the input of its own MLP head), frozen."""

    kind = "imagereward"

    def __init__(self, scorer, weights_file: str | os.PathLike | None = None):
        self.scorer = scorer  # an instructbooth.rewards.ImageReward
        self.module = scorer.model
        self.weights_file = str(weights_file) if weights_file else ""
        self.feature_size = scorer.config.text.width
        self.image_feature_size = 0
        self.identity = f"imagereward:{weights_fingerprint(scorer.model.state_dict())}"

    @torch.no_grad()
    def pair_features(self, images, candidates):
        grid, valid = candidate_grid(candidates)
        size = self.scorer.config.vision.image_size
        if isinstance(images, Tensor):
            pixels = preprocess_exact(images, size, "BCHW")
        else:
            pixels = preprocess_pil_batch([image.convert("RGB") for image in images], size)
        if len(pixels) != len(grid):
            raise ValueError(f"{len(pixels)} images but {len(grid)} candidate lists")
        model, chunk = self.scorer.model, self.scorer.max_batch_size
        device, dtype = self.scorer.device, self.scorer.dtype
        rows = []
        for start in range(0, len(grid), chunk):
            tokens = model.embed_images(pixels[start: start + chunk].to(device, dtype))
            columns = []
            for j in range(valid.shape[1]):
                ids = self.scorer.tokenize([row[j] for row in grid[start: start + chunk]])
                columns.append(model.text_features(ids.input_ids.to(device), ids.attention_mask.to(device), tokens))
            rows.append(torch.stack(columns, dim=1).float().cpu())
        return torch.cat(rows), valid


def cached_pair_features(backbone: Backbone, images, candidates: Sequence[Sequence[str]],
                         cache_dir: str | os.PathLike | None, image_keys: Sequence[str]) -> tuple[Tensor, Tensor]:
    """`backbone.pair_features`, kept in `cache_dir/<key>.safetensors` (None: no cache). The key
    hashes the backbone identity, `image_keys` (e.g. the image files' sha256) and candidates."""
    if cache_dir is None:
        return backbone.pair_features(images, candidates)
    digest = hashlib.sha256(backbone.identity.encode())
    for key, prompts in zip(image_keys, candidates):
        digest.update(f"{key}\x00{chr(1).join(prompts)}\x02".encode())
    path = Path(cache_dir) / f"features-{digest.hexdigest()[:24]}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        if stored["features"].shape[-1] == backbone.feature_size:
            return stored["features"], stored["valid"].bool()
    features, valid = backbone.pair_features(images, candidates)
    write_safetensors(path, {"features": features, "valid": valid.to(torch.uint8)},
                      {"backbone_identity": backbone.identity})
    return features, valid


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
