"""The RL algorithms behind one seam: what an epoch's rewards become (`signal`) and how a
micro-batch is trained on it (`backward`). The trainer's loop knows neither.

- `DDPO` (Black et al. 2023): per-sample advantages (per prompt group, a running per-prompt
  tracker, or the batch), and the clipped importance-sampled policy gradient on a seeded subset
  of each trajectory's steps (plus the KL guard on identifier samples).
- `RWR` (reward-weighted fine-tuning, Lee et al. 2023): per-sample weights from the rewards, and
  the weighted denoising loss on the final latents plus beta (`rwr_beta`) times the denoising
  loss on regulariser data (`Regulariser`: by default the subject photos with their prompt).
  Method "rwr" weights with `rwr_weighting`; method "lee" with the reward itself, as published
  (the trainer also keeps its first epoch's samples: `RLConfig.offline`).

`make_algorithm(config, regulariser)` picks one by `config.method`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .advantages import PerPromptStatTracker, batch_advantages, clip_advantages, group_advantages
from .config import RLConfig
from ..seeds import generator_for
from .context import RunContext
from .rwr import reward_weights
from .updates import Backward, Regulariser, StepStats, ddpo_update, rwr_update


class Algorithm(Protocol):
    logged: tuple[str, ...]  # the StepStats fields its epochs report

    def signal(self, tracker: PerPromptStatTracker, samples) -> tuple[torch.Tensor, float | None]:
        """[N] per-sample signal of all processes' samples, and the share of samples whose
        advantage fell back from per-prompt statistics (None where that does not apply)."""

    def backward(self, ctx: RunContext, samples, rows: torch.Tensor, signal: torch.Tensor, identifier: torch.Tensor,
                 draw: tuple, scale: float, slots: torch.Tensor, backward: Backward | None = None) -> StepStats:
        """Back-propagates the loss of the micro-batch at local `rows` times `scale` (with `backward`,
        default the precision's); `draw` = (epoch, inner epoch, update) and `slots` the rows'
        places in that optimizer step."""


@dataclass
class DDPO:
    config: RLConfig
    logged: tuple[str, ...] = ("loss", "clip_fraction", "approx_kl", "kl_penalty")

    def signal(self, tracker: PerPromptStatTracker, samples) -> tuple[torch.Tensor, float | None]:
        keys, splits = [d.text for d in samples.drawn], [d.group for d in samples.drawn]
        if self.config.advantage == "tracker":
            advantages = tracker.advantages(keys, samples.rewards, splits)
        elif self.config.advantage == "group":
            advantages = group_advantages(samples.rewards, keys)
        else:
            advantages = batch_advantages(samples.rewards)
        return clip_advantages(advantages.values, self.config.adv_clip), advantages.fallback_share

    def backward(self, ctx, samples, rows, signal, identifier, draw, scale, slots, backward=None) -> StepStats:
        steps = self.step_index(samples, rows, draw[0], draw[1])
        return ddpo_update(ctx, samples.trajectories, rows, steps, signal, identifier, scale, backward)

    def step_index(self, samples, rows: torch.Tensor, epoch: int, inner: int) -> torch.Tensor:
        """[m, K]: the K trajectory steps trained on for each sample, a seeded random subset (of
        the window's first steps) per sample."""
        config, seeds = self.config, samples.trajectories.seeds
        picks = [torch.randperm(config.window_steps, generator=generator_for(config.seed, epoch, inner, seeds[r],
                                                                              "steps")) for r in rows.tolist()]
        return torch.stack(picks)[:, : config.train_timesteps]


@dataclass
class RWR:
    config: RLConfig
    regulariser: Regulariser | None = None
    weighting: str = "exp"  # see rwr.reward_weights
    logged: tuple[str, ...] = ("loss", "weighted", "prior")

    def signal(self, tracker: PerPromptStatTracker, samples) -> tuple[torch.Tensor, None]:
        return reward_weights(samples.rewards, self.weighting, self.config.rwr_temperature), None

    def backward(self, ctx, samples, rows, signal, identifier, draw, scale, slots, backward=None) -> StepStats:
        return rwr_update(ctx, samples.trajectories, rows, signal, draw, scale, slots, self.regulariser, backward)


def uses_regulariser(config: RLConfig) -> bool:
    """Whether the algorithm has a beta term on regulariser images (RWR and lee with rwr_beta > 0)."""
    return config.method != "ddpo" and config.rwr_beta > 0


def make_algorithm(config: RLConfig, regulariser: Regulariser | None = None) -> Algorithm:
    """The algorithm of `config.method`; RWR's regulariser data is needed when rwr_beta > 0."""
    if config.method == "ddpo":
        return DDPO(config)
    if uses_regulariser(config) and regulariser is None:
        raise ValueError(f"method {config.method!r} with rwr_beta > 0 needs subject_images (the personalization "
                         "photos) or regulariser_images (class images, a captioned folder) for its beta term; pass "
                         "them or set rwr_beta=0")
    return RWR(config, regulariser, "reward" if config.method == "lee" else config.rwr_weighting)
