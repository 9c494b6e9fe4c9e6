"""Held-in / held-out accuracy of a demo model: sample every caption, read the images back."""

from __future__ import annotations

import torch

from ..components import SDComponents
from .checker import attribute_accuracy
from .sampling import SamplerConfig, sample
from .world import captions

SPLITS = {"heldin": "train", "heldout": "heldout"}  # report name -> world split


def evaluate_prompts(
    components: SDComponents, prompts: list[str], sampler: SamplerConfig = SamplerConfig(), seed: int = 0
) -> dict[str, float]:
    """Per-attribute accuracy (plus "all" and "reward") of one sampled image per prompt."""
    images = sample(components, prompts, sampler, torch.Generator().manual_seed(seed))
    return attribute_accuracy(images, prompts)


def evaluate_splits(
    components: SDComponents, sampler: SamplerConfig = SamplerConfig(), per_caption: int = 4, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{"heldin": {...}, "heldout": {...}}: accuracy over `per_caption` samples of every
    world caption of the 72 held-in and 36 held-out ones."""
    result = {}
    for name, split in SPLITS.items():
        prompts = [c for c in captions(split) for _ in range(per_caption)]
        scores = evaluate_prompts(components, prompts, sampler, seed)
        result[name] = {k: round(v, 4) for k, v in scores.items()}
    return result
