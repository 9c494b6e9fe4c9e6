"""What every phase of an RL epoch needs, bundled once per run, and seed derivation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..components import SDComponents
from ..prompts import RLPrompts
from ..sampling import DDIMSchedule, PromptEmbeddingCache
from ..training import Precision
from .config import RLConfig
from .distributed import Processes
from .policy import Policy

RewardFn = Callable[[torch.Tensor, list, list], torch.Tensor]  # images [B,3,H,W] in [0,1], prompts, metadata -> [B]


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


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, e.g. derive_seed(config.seed, epoch, "prompts").

    Every random draw of an epoch comes from generators seeded this way, so an epoch is
    a function of (seed, epoch, model state) alone: resuming needs no generator state,
    and the draws do not depend on how many processes share the work."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator_for(*parts) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(derive_seed(*parts))
