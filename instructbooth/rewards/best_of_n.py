"""Best-of-N: the rejection sampling baseline of Lee et al. 2023.

Generate N images for a prompt, score them all, keep the k best. No training; the reward
model only reranks. `best_of_n` does the scoring and selection for images already made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .base import empty_metadata
from .image_reward.preprocess import to_bchw


@dataclass(frozen=True)
class BestOfN:
    images: Any  # the k best, best first: a tensor [k, ...] (same layout as given) or a list
    scores: Tensor  # [k] float32, descending
    indices: Tensor  # [k] int64, positions of the kept images in the input


def best_of_n(scorer: Any, images: Tensor | Sequence[Any], prompt: str, k: int = 1) -> BestOfN:
    """Scores N candidates for one prompt and keeps the k best, sorted best first.

    scorer: anything with `.score(images, prompt) -> [N]` (ImageReward: tensors, PIL images
    or file paths) or a `RewardFn` (then images must be a tensor, [N, C, H, W] or [N, H, W, C]).
    Ties keep the earlier image first."""
    count = len(images)
    if not 1 <= k <= count:
        raise ValueError(f"k must be between 1 and the number of images ({count}), got {k}")
    scores = _score_all(scorer, images, prompt).detach().float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    if isinstance(images, Tensor):
        kept = images[order.to(images.device)]
    else:
        kept = [images[i] for i in order.tolist()]
    return BestOfN(kept, scores[order], order)


def _score_all(scorer: Any, images: Tensor | Sequence[Any], prompt: str) -> Tensor:
    if hasattr(scorer, "score"):
        return scorer.score(images, prompt)
    if not isinstance(images, Tensor):
        raise ValueError("a plain RewardFn scores tensors only; give images as a tensor [N, C, H, W]")
    batch = to_bchw(images)
    with torch.no_grad():
        return scorer(batch, [prompt] * len(batch), empty_metadata(len(batch)))
