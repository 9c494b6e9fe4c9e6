"""What every phase of an RL epoch needs, bundled once per run (seeds: `instructbooth.seeds`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components import SDComponents
from ..prompts import RLPrompts
from ..rewards.base import RewardFn
from ..sampling import DDIMSchedule, PromptEmbeddingCache
from ..training import Precision
from .config import RLConfig
from .distributed import Processes
from .policy import Policy



@dataclass
class RunContext:
    components: SDComponents
    policy: Policy
    config: RLConfig
    prompts: RLPrompts
    reward_fn: RewardFn
    processes: Processes
    precision: Precision
    schedule: DDIMSchedule  # the sampler's steps (on the components' device)
    embeddings: PromptEmbeddingCache  # text-encoder outputs (the text encoder stays frozen)
    subject_measure: RewardFn | None = None  # same protocol as a reward; higher = more like the subject

    @property
    def device(self) -> torch.device:
        return self.components.device

    def uncond(self) -> torch.Tensor | None:
        """[1, L, D] embedding of the negative prompt, None without guidance."""
        if self.config.guidance == 1.0:
            return None
        return self.embeddings([self.config.negative_prompt]).to(self.device)
