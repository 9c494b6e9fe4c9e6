"""Scoring demo models: every prompt sampled at fixed seeds and read back by the checker.

- `evaluate` / `evaluate_model`: the demo's evaluation of a model on the instruction prompts
  (per-image scores from `instructions.score_image`, with standard errors);
- `evaluate_prompts` / `evaluate_splits`: per-attribute accuracy on world captions (how the
  pretrained model is judged and its card written);
- `sample_prompts`: the one way both sample (the library's sampler, a seed per image).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..components import SDComponents
from ..sampling import PromptEmbeddingCache, SamplerSettings, sample_images
from .checker import attribute_accuracy
from .instructions import instruction_prompts, layout_prompt, score_image
from .prompts import PromptSpec
from .settings import SPLITS, DemoConfig, EvalConfig
from .world import BACKGROUNDS, IMAGE_SIZE, captions, parse_caption, rgb, sample_batch


@dataclass(frozen=True)
class SamplerConfig:
    """How world captions are sampled to judge a pretrained model (the model card records it)."""

    steps: int = 50  # stochastic DDIM steps
    guidance: float = 1.0  # classifier-free guidance scale (1 = none: one UNet call per step)
    eta: float = 1.0  # DDIM noise: 1 = ancestral (stochastic), 0 = deterministic
    batch_size: int = 64  # prompts per UNet call (the call itself is twice this with guidance)

    def settings(self) -> SamplerSettings:
        return SamplerSettings(self.steps, self.guidance, self.eta, IMAGE_SIZE, IMAGE_SIZE)


def sample_prompts(components: SDComponents, prompts: list[str], seeds: list[int], settings: SamplerSettings,
                   batch_size: int) -> torch.Tensor:
    """Images [B, 3, 32, 32] in [0, 1], one per (prompt, seed), `batch_size` per sampler call:
    the library's sampler (`sampling.sample_images`), so an image depends on its prompt and
    seed only, not on the batch it was drawn in."""
    embeddings, parts = PromptEmbeddingCache(components), []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        parts.append(sample_images(components, prompts[start:stop], seeds[start:stop], settings,
                                   embeddings=embeddings).cpu())
    return torch.cat(parts)

WORLD_SPLITS = {"heldin": "train", "heldout": "heldout"}  # report name -> world split


def sample_world(components: SDComponents, prompts: list[str], sampler: SamplerConfig = SamplerConfig(),
                 seed: int = 0) -> torch.Tensor:
    """One image per prompt, [B, 3, 32, 32] in [0, 1], image i at seed `seed * 1_000_003 + i`."""
    seeds = [seed * 1_000_003 + i for i in range(len(prompts))]
    return sample_prompts(components, prompts, seeds, sampler.settings(), sampler.batch_size)


def evaluate_prompts(
    components: SDComponents, prompts: list[str], sampler: SamplerConfig = SamplerConfig(), seed: int = 0
) -> dict[str, float]:
    """Per-attribute accuracy (plus "all" and "reward") of one sampled image per prompt."""
    return attribute_accuracy(sample_world(components, prompts, sampler, seed), prompts)


def evaluate_splits(
    components: SDComponents, sampler: SamplerConfig = SamplerConfig(), per_caption: int = 4, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{"heldin": {...}, "heldout": {...}}: accuracy over `per_caption` samples of every
    world caption of the 72 held-in and 36 held-out ones."""
    result = {}
    for name, split in WORLD_SPLITS.items():
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


# --- the demo's evaluation of a model on the instruction prompts ----------------------------------


@dataclass
class Evaluation:
    """Images of one model on one split's prompts, and their scores."""

    prompts: list[str]  # one per image, prompt-major: per_prompt images of prompts[0] first
    images: torch.Tensor  # [N, 3, 32, 32] in [0, 1]
    scores: list[dict[str, float]]  # `score_image` of each image

    def summary(self) -> dict[str, float]:
        """Per score: the mean over images, "<name>_se" its standard error (std over images /
        sqrt(n)), "<name>_std" the spread of per-prompt means; "images" n, and "<name>_count"
        for the 0/1 scores (subject, exact, subject_exact): how many images have it."""
        result: dict[str, float] = {}
        for name in self.scores[0]:
            values = np.array([s[name] for s in self.scores])
            per_prompt = [np.mean([s[name] for s, p in zip(self.scores, self.prompts) if p == q])
                          for q in dict.fromkeys(self.prompts)]
            result[name] = round(float(values.mean()), 4)
            result[f"{name}_se"] = round(standard_error(values), 4)
            result[f"{name}_std"] = round(float(np.std(per_prompt)), 4)
            if name in COUNTED:
                result[f"{name}_count"] = int(values.sum())
        result["images"] = len(self.scores)
        return result


COUNTED = ("subject", "exact", "subject_exact")  # 0/1 scores whose image counts the report states


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of `values` (sample std / sqrt(n)); 0 for one value."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(components: SDComponents, prompts: list[str], config: EvalConfig, seed: int) -> Evaluation:
    """`config.per_prompt` images of every prompt at fixed seeds (prompt i, image j: the same
    seed for every model), scored."""
    expanded = [p for p in prompts for _ in range(config.per_prompt)]
    seeds = [seed * 1_000_003 + 1_000 * i + j for i in range(len(prompts)) for j in range(config.per_prompt)]
    images = sample_prompts(components, expanded, seeds, config.settings(), config.batch_size)
    return Evaluation(expanded, images, [score_image(img, p) for img, p in zip(images, expanded)])


ALONE = "alone"  # the evaluation of the subject prompt alone ("on a white background next to sks toy ...")


def alone_prompts(config: "DemoConfig") -> list[str]:
    """The subject alone on each background, as the reference photos are captioned."""
    return [layout_prompt(PromptSpec(background=b, subject="identifier", detailed=config.detailed), config.layout)
            for b in BACKGROUNDS]


def evaluate_model(components: SDComponents, subject: str | None, config: DemoConfig) -> dict[str, Evaluation]:
    """{"train": Evaluation, "heldout": Evaluation} on every scene of each split; with the
    identifier also ALONE: the plain subject prompt, `alone_per_prompt` images per background."""
    result = {split: evaluate(components, instruction_prompts(split, subject, config), config.evaluation, config.seed)
              for split in SPLITS}
    if subject == "identifier":
        alone = replace(config.evaluation, per_prompt=config.evaluation.alone_per_prompt)
        result[ALONE] = evaluate(components, alone_prompts(config), alone, config.seed)
    return result
