"""ImageReward as one module: ViT -> cross-attending BERT -> MLP head on token 0.

    score = (head(text_encoder(prompt, vit(pixels))[:, 0]) - score_mean) / score_std

Official key names map to ours by a prefix swap (`OFFICIAL_PREFIXES`); the official file also
carries tensors that scoring never reads (`IGNORED_OFFICIAL_KEYS`).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .blip import TextEncoder, VisionTransformer
from .config import ImageRewardConfig

# official prefix -> our prefix
OFFICIAL_PREFIXES = {
    "blip.visual_encoder.": "vision.",
    "blip.text_encoder.": "text.",
    "mlp.layers.": "head.layers.",
}
# present in ImageReward.pt, unused for scoring (retrieval projections, a position buffer)
IGNORED_OFFICIAL_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


class RewardHead(nn.Module):
    """MLP on the token-0 feature: Linear layers with no activation, dropout after the first
    ones (indices 0, 2, 4, 6, 7 for the official widths, as in ImageReward.pt)."""

    def __init__(self, in_width: int, widths: tuple[int, ...], dropouts: tuple[float, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, out_width in enumerate(widths):
            layers.append(nn.Linear(in_width, out_width))
            if i < len(widths) - 2:
                layers.append(nn.Dropout(dropouts[i] if i < len(dropouts) else 0.0))
            in_width = out_width
        self.layers = nn.Sequential(*layers)

    def forward(self, feature: Tensor) -> Tensor:
        """[B, Wt] -> [B, widths[-1]]."""
        return self.layers(feature)


class ImageRewardModel(nn.Module):
    def __init__(self, config: ImageRewardConfig):
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.text = TextEncoder(config.text)
        self.head = RewardHead(config.text.width, config.head_widths, config.head_dropouts)
        self.eval()

    def embed_images(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> image tokens [B, T, Wv]."""
        return self.vision(pixels)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """[B, L] ids and mask, [B, T, Wv] image tokens -> token-0 feature [B, Wt]."""
        return self.text(input_ids, attention_mask, image_tokens)[:, 0]

    def scores_from_features(self, features: Tensor) -> Tensor:
        """Token-0 features [B, Wt] -> normalised scores [B] (in the features' dtype)."""
        raw = self.head(features)[:, 0]
        return (raw - self.config.score_mean) / self.config.score_std

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """pixels [B, 3, S, S] (normalised), input_ids and attention_mask [B, L] -> scores [B]."""
        image_tokens = self.embed_images(pixels)
        return self.scores_from_features(self.text_features(input_ids, attention_mask, image_tokens))


def from_official_keys(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Official names -> ours. Returns (mapped, unknown keys); ignored keys are dropped."""
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith(IGNORED_OFFICIAL_KEYS):
            continue
        prefix = next((p for p in OFFICIAL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
        else:
            mapped[OFFICIAL_PREFIXES[prefix] + key[len(prefix):]] = value
    return mapped, unknown


def to_official_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our names -> the official ones (for files other tools can read)."""
    ours_to_official = {ours: official for official, ours in OFFICIAL_PREFIXES.items()}
    result = {}
    for key, value in state_dict.items():
        prefix = next(p for p in ours_to_official if key.startswith(p))
        result[ours_to_official[prefix] + key[len(prefix):]] = value
    return result


def random_image_reward_model(
    config: ImageRewardConfig, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ImageRewardModel:
    """A randomly initialised model (normal(0, 0.02) weights, unit norms) for tests and benchmarks.
    Built on the meta device first, so the full-size model costs one fill, not two."""
    with torch.device("meta"):
        model = ImageRewardModel(config)
    model.to_empty(device=device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_random_like(name, param, generator))
    return model.to(dtype)


def _random_like(name: str, param: Tensor, generator: torch.Generator) -> Tensor:
    if "LayerNorm" in name or "norm" in name.split(".")[-2]:
        return torch.ones_like(param, device="cpu") if name.endswith("weight") else torch.zeros_like(param, device="cpu")
    return torch.randn(param.shape, generator=generator) * 0.02
