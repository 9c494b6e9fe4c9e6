"""The learned reward's head: a small MLP on frozen image-text features.

Two kinds of features (what a backbone gives, features.py):
- joint (`image_size == 0`): one vector per image-prompt pair that already mixes both, like
  ImageReward's token-0 feature (the text encoder cross-attends to the image);
  head: standardise -> Linear(F, H) -> GELU -> Linear(H, H) -> GELU -> Linear(H, 1);
- dual (`image_size > 0`): the image's features (first `image_size`) and the prompt's (the
  rest), computed apart; head: standardise -> (A·image) ⊙ (B·text) -> GELU -> Linear(H, H)
  -> GELU -> Linear(H, 1). The product lets a few thousand labels tie words to looks.
Standardisation uses the training features' mean and std, stored in the head (buffers), so
a saved head is complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadConfig:
    feature_size: int  # F: width of one image-prompt feature
    image_size: int = 0  # 0: joint features; > 0: the first image_size of F are the image's (dual)
    hidden: int = 128  # H: width of the hidden layers

    def __post_init__(self) -> None:
        if self.feature_size < 1 or self.hidden < 1:
            raise ValueError(f"feature_size and hidden must be positive, got {self.feature_size}, {self.hidden}")
        if not 0 <= self.image_size < self.feature_size:
            raise ValueError(f"image_size must be in [0, feature_size), got {self.image_size} of {self.feature_size}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class RewardHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        size, hidden = config.feature_size, config.hidden
        self.register_buffer("feature_mean", torch.zeros(size))
        self.register_buffer("feature_std", torch.ones(size))
        if config.image_size:
            self.image_in = nn.Linear(config.image_size, hidden)
            self.text_in = nn.Linear(size - config.image_size, hidden)
        else:
            self.joint_in = nn.Linear(size, hidden)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def set_standardisation(self, features: Tensor) -> None:
        """Mean and std per feature from training features [..., F] (std floored at 1e-6)."""
        flat = features.reshape(-1, self.config.feature_size).float()
        with torch.no_grad():
            self.feature_mean.copy_(flat.mean(0))
            self.feature_std.copy_(flat.std(0, unbiased=False).clamp_min(1e-6))

    def forward(self, features: Tensor) -> Tensor:
        """features [..., F] -> scores [...] (about 0 bad .. 1 good after training)."""
        if features.shape[-1] != self.config.feature_size:
            raise ValueError(f"the head takes features of size {self.config.feature_size}, got {features.shape[-1]}")
        x = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        if self.config.image_size:
            split = self.config.image_size
            hidden = self.image_in(x[..., :split]) * self.text_in(x[..., split:])
        else:
            hidden = self.joint_in(x)
        return self.out(hidden)[..., 0]
