"""Held-in / held-out accuracy of a demo model: sample every caption, read the images back."""

from __future__ import annotations

import numpy as np
import torch

from ..components import SDComponents
from .checker import attribute_accuracy
from .sampling import SamplerConfig, sample
from .world import BACKGROUNDS, captions, parse_caption, rgb, sample_batch

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


def background_leak(scheduler, timestep: int | None = None, count: int = 1000, seed: int = 0) -> float:
    """How often the background can be read from the noised image x_t alone (t = the last
    training timestep by default): the share of `count` world images whose mean noised
    colour is nearest to their own background's. 1/3 is chance. A schedule whose last
    timestep still leaks the background lets the model ignore the prompt there, while
    sampling starts from pure noise, which carries no background."""
    t = scheduler.config.num_train_timesteps - 1 if timestep is None else timestep
    signal = float(scheduler.alphas_cumprod[t].sqrt())
    noise_std = float((1 - scheduler.alphas_cumprod[t]).sqrt())
    rng = np.random.default_rng(seed)
    images, texts = sample_batch(count, rng, split="all")
    pixels = images * 2 - 1  # model space
    noised = signal * pixels + noise_std * rng.standard_normal(pixels.shape).astype(np.float32)
    means = noised.mean(axis=(2, 3))  # [N, 3]
    references = np.stack([signal * (rgb(b) * 2 - 1) for b in BACKGROUNDS])  # [3, 3]
    guesses = ((means[:, None, :] - references) ** 2).sum(-1).argmin(-1)
    truth = [BACKGROUNDS.index(parse_caption(t).background) for t in texts]
    return float(np.mean(guesses == np.asarray(truth)))
