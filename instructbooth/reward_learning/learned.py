"""A learned reward: a trained head on a frozen backbone, saved as one safetensors file.

    save_learned_reward("learned.safetensors", head, backbone, config, metrics)
    reward = load_learned_reward("learned.safetensors", backbone="ImageReward.pt", device="cuda")
    reward = load_reward("learned:learned.safetensors")      # the same, by spec (rewards/registry.py)

The file holds the head's tensors (`head.*`) and string metadata: `format`
("instructbooth.learned_reward/1"), `backbone_kind`, `backbone_identity` (kind + weights
fingerprint), `backbone_file` (where the backbone's weights were, a hint for loading),
`feature_size`, `image_feature_size`, `hidden`, `lambda`, `num_prompts`, `temperature`,
`aux_on`, `metrics` (JSON). Loading refuses another backbone (identity differs) and features of
another size. A `LearnedReward` is a `RewardFn` and scores like ImageReward (`.score(images,
prompts, layout)`, `.model`), so RL, RWR, best-of-N, the Score nodes and preference pairs take it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..files import write_safetensors
from ..rewards.base import check_reward_inputs
from ..rewards.image_reward.preprocess import to_bchw
from .features import Backbone, ImageRewardBackbone
from .head import HeadConfig, RewardHead

FORMAT = "instructbooth.learned_reward/1"
SPEC_PREFIX = "learned:"


class LearnedReward:
    """Scores image-prompt pairs with a trained head on a frozen backbone (higher is better; ~0 bad, ~1 good)."""

    name = "learned"

    def __init__(self, head: RewardHead, backbone: Backbone, metadata: dict[str, str] | None = None):
        self.head = head.eval().requires_grad_(False)
        self.backbone = backbone
        self.metadata = dict(metadata or {})
        self.model = nn.ModuleDict({"head": self.head, "backbone": backbone.module})  # weights, for fingerprints

    @property
    def device(self) -> torch.device:
        return next(self.backbone.module.parameters()).device

    def score(self, images: Tensor | Sequence[Any], prompts: str | Sequence[str], layout: str = "auto") -> Tensor:
        """Images (tensor in [0, 1], [B, C, H, W] or [B, H, W, C], or PIL images / files) and one
        prompt or one per image -> float32 scores [B] (on the images' device for tensors)."""
        if isinstance(images, Tensor):
            batch, pictures = to_bchw(images, layout), None
        else:
            pictures = [_open(image) for image in (images if isinstance(images, (list, tuple)) else [images])]
            batch = None
        count = len(batch) if batch is not None else len(pictures)
        texts = [prompts] * count if isinstance(prompts, str) else list(prompts)
        if len(texts) == 1 and count > 1:
            texts = texts * count
        if len(texts) != count:
            raise ValueError(f"give one prompt or one per image: {len(texts)} prompts for {count} images")
        with torch.no_grad():
            features, _ = self.backbone.pair_features(batch if batch is not None else pictures, [[t] for t in texts])
            scores = self.head(features.to(self.head.feature_mean.device))[:, 0].float()
        return scores.to(images.device) if isinstance(images, Tensor) else scores.cpu()

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        """RewardFn: images [B, 3, H, W] in [0, 1], B prompts -> float32 [B] on images.device."""
        check_reward_inputs(images, prompts, metadata)
        return self.score(images, list(prompts), layout="BCHW")


def save_learned_reward(path: str | os.PathLike, head: RewardHead, backbone: Backbone, config: Any = None,
                        metrics: dict | None = None) -> Path:
    """Writes the head and its metadata (see module doc) atomically; returns the path."""
    settings = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    metadata = {
        "format": FORMAT,
        "backbone_kind": backbone.kind,
        "backbone_identity": backbone.identity,
        "backbone_file": str(getattr(backbone, "weights_file", "") or ""),
        "feature_size": str(head.config.feature_size),
        "image_feature_size": str(head.config.image_size),
        "hidden": str(head.config.hidden),
        "lambda": str(settings.get("lam", "")),
        "num_prompts": str(settings.get("num_prompts", "")),
        "temperature": str(settings.get("temperature", "")),
        "aux_on": str(settings.get("aux_on", "")),
        "metrics": json.dumps(metrics or {}),
    }
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    return write_safetensors(path, tensors, metadata)


def read_learned_reward(path: str | os.PathLike) -> tuple[RewardHead, dict[str, str]]:
    """The head and metadata of a learned-reward file (no backbone needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"learned reward {path} does not exist; make one with 'instructbooth reward-train'")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # not a safetensors file
        raise ValueError(f"{path} is not a learned reward (safetensors) file: {error}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a learned reward: its metadata format is {metadata.get('format')!r}, "
                         f"expected {FORMAT!r} (made by 'instructbooth reward-train')")
    config = HeadConfig(int(metadata["feature_size"]), int(metadata["image_feature_size"]), int(metadata["hidden"]))
    head = RewardHead(config)
    state = {key[len("head."):]: value for key, value in tensors.items() if key.startswith("head.")}
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: head tensors do not fit its metadata (missing {missing}, unexpected {unexpected})")
    return head.eval(), metadata


def load_learned_reward(path: str | os.PathLike, backbone: Any = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32) -> LearnedReward:
    """A LearnedReward from its file. backbone: None (rebuilt from the file's metadata: the
    ImageReward weights at `backbone_file`, or the shipped demo model), a weights path, an
    ImageReward scorer, or a Backbone. Refuses a backbone other than the one it was trained on."""
    head, metadata = read_learned_reward(path)
    resolved = resolve_backbone(metadata, backbone, device, dtype)
    if resolved.identity != metadata["backbone_identity"]:
        raise ValueError(f"{path} was trained on backbone {metadata['backbone_identity']} "
                         f"({metadata.get('backbone_file') or metadata['backbone_kind']}) but was given "
                         f"{resolved.identity}: a learned reward only works on the features it was trained on; "
                         "load it with its own backbone or train a new one on this backbone")
    if resolved.feature_size != head.config.feature_size or resolved.image_feature_size != head.config.image_size:
        raise ValueError(f"mismatched feature sizes: {path} takes {head.config.feature_size} features, "
                         f"the backbone gives {resolved.feature_size}")
    return LearnedReward(head.to(next(resolved.module.parameters()).device), resolved, metadata)


def resolve_backbone(metadata: dict[str, str], backbone: Any, device, dtype) -> Backbone:
    kind = metadata.get("backbone_kind", "")
    if backbone is not None and hasattr(backbone, "pair_features"):
        return backbone
    if kind == "demo" and backbone is None:
        from ..demo.reward_features import DemoBackbone

        return DemoBackbone.shipped(device=device)
    if kind != "imagereward":
        raise ValueError(f"learned reward backbone {kind!r}: pass its Backbone object as backbone=")
    from ..rewards.image_reward import ImageReward, load_image_reward

    if isinstance(backbone, ImageReward):
        return ImageRewardBackbone(backbone)
    weights = backbone if backbone is not None else metadata.get("backbone_file")
    if not weights or not Path(weights).exists():
        raise FileNotFoundError(f"the learned reward needs its ImageReward weights ({weights or 'no file recorded'} "
                                "not found); pass backbone='/path/ImageReward.pt'")
    return ImageRewardBackbone(load_image_reward(weights, sidecar_config(weights), device, dtype), weights)


def sidecar_config(weights: str | os.PathLike) -> Path | None:
    """`<stem>.json` or `config.json` beside ImageReward weights (sizes of non-standard models), if any."""
    path = Path(weights)
    return next((c for c in (path.with_suffix(".json"), path.parent / "config.json") if c.is_file()), None)


def _open(image: Any):
    from PIL import Image

    from ..rewards.image_reward.preprocess import load_image

    return image if isinstance(image, Image.Image) else load_image(image)
