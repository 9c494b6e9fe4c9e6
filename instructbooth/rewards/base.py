"""The reward interface the RL trainers call, and its input/output checks.

A reward is any callable

    reward(images, prompts, metadata) -> scores

- images: float tensor [B, 3, H, W], values in [0, 1] (RGB, any H and W, any device);
- prompts: B strings, the prompt each image was made from;
- metadata: B dicts (per-sample extras such as the subject or the seed; may be empty);
- scores: float32 tensor [B] on `images.device`; higher is better.

Rewards are not differentiated by the trainers that use this interface (DDPO, RWR); a reward
that supports gradients says so in its own API (e.g. `ImageReward.score_differentiable`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class RewardFn(Protocol):
    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> Tensor:
        """images [B, 3, H, W] in [0, 1], B prompts, B metadata dicts -> float32 scores [B]."""
        ...


def check_reward_inputs(images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None) -> int:
    """Returns the batch size B; raises ValueError naming what does not fit the interface."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"a reward takes images as a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    batch = images.shape[0]
    if isinstance(prompts, str) or len(prompts) != batch:
        raise ValueError(f"a reward takes one prompt per image (a list of {batch} strings), got {prompts!r:.80}")
    if metadata is not None and len(metadata) != batch:
        raise ValueError(f"a reward takes one metadata dict per image ({batch}), got {len(metadata)}")
    return batch


def as_scores(values: Any, batch: int, device: torch.device, name: str = "reward") -> Tensor:
    """Whatever a reward returned -> float32 [B] on `device`; raises if it is not B numbers."""
    scores = torch.as_tensor(values).detach() if not isinstance(values, Tensor) else values
    scores = scores.to(device=device, dtype=torch.float32)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.shape != (batch,):
        raise ValueError(f"{name} returned shape {tuple(scores.shape)}; a reward returns one number per image, [{batch}]")
    return scores


def empty_metadata(batch: int) -> list[dict]:
    return [{} for _ in range(batch)]
