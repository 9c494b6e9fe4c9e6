"""Cheap rewards for tests and toy runs, and a wrapper that makes a user function a reward.

All follow `RewardFn` (see base.py): images [B, 3, H, W] in [0, 1] -> float32 [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .base import as_scores, check_reward_inputs

LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)  # Rec. 709 luma weights for R, G, B


@dataclass(frozen=True)
class BrightnessReward:
    """Mean luminance (Rec. 709 weights on the stored RGB values), in [0, 1]."""

    name: str = "brightness"

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        check_reward_inputs(images, prompts, metadata)
        weights = torch.tensor(LUMA_WEIGHTS, device=images.device, dtype=torch.float32).view(1, 3)
        return (images.float().mean(dim=(2, 3)) * weights).sum(dim=1)


@dataclass(frozen=True)
class TargetColorReward:
    """Closeness of the mean colour to `target`: 1 - |mean_rgb - target| / sqrt(3), in [0, 1]
    (1 = the mean colour is the target, 0 = the opposite corner of the RGB cube)."""

    target: tuple[float, float, float] = (1.0, 0.0, 0.0)  # RGB in [0, 1]
    name: str = "target_color"

    def __post_init__(self):
        if len(self.target) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.target):
            raise ValueError(f"target colour must be three numbers in [0, 1] (R, G, B), got {self.target!r}")

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        check_reward_inputs(images, prompts, metadata)
        target = torch.tensor(self.target, device=images.device, dtype=torch.float32)
        distance = (images.float().mean(dim=(2, 3)) - target).norm(dim=1)
        return 1.0 - distance / 3**0.5


@dataclass(frozen=True)
class FunctionReward:
    """A user function as a reward.

    Batched (default): `fn(images [B, 3, H, W], prompts, metadata) -> B numbers`.
    `per_image=True`: `fn(image [3, H, W], prompt, metadata) -> number`, called B times.
    The result is checked and returned as float32 [B] on the images' device."""

    fn: Callable[..., Any]
    per_image: bool = False
    name: str = "function"

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        batch = check_reward_inputs(images, prompts, metadata)
        metadata = metadata if metadata is not None else [{} for _ in range(batch)]
        if self.per_image:
            values = [float(self.fn(images[i], prompts[i], metadata[i])) for i in range(batch)]
        else:
            values = self.fn(images, list(prompts), list(metadata))
        return as_scores(values, batch, images.device, self.name)


def reward_from_function(fn: Callable[..., Any], per_image: bool = False, name: str | None = None) -> FunctionReward:
    """Wraps `fn` (see FunctionReward) so trainers can call it like any reward."""
    if not callable(fn):
        raise ValueError(f"reward_from_function needs a callable, got {type(fn).__name__}")
    return FunctionReward(fn, per_image, name or getattr(fn, "__name__", "function"))
