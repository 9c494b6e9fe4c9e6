"""From rewards to advantages: normalisation per prompt, per group or per batch, and clipping.

DDPO normalises each reward against the statistics of its own prompt, so that easy
prompts (high reward whatever the image) do not drown hard ones. The per-prompt
statistics come from a running buffer of that prompt's recent rewards (the stat
tracker), or from the current batch alone ("group" normalisation, GRPO-style).
Where a prompt has too few rewards for its own statistics, a fallback stands in; every
function here also says which samples used one (`Advantages.fallback`), because a run
whose advantages all fall back compares identifier and plain prompts with each other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch

EPS = 1e-6  # added to standard deviations before dividing


def _normalised(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
    return (values - mean) / (std + eps)


def batch_normalize(rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) over the whole batch [B] (population std)."""
    rewards = rewards.double()
    return _normalised(rewards, rewards.mean(), rewards.std(unbiased=False), eps).float()


@dataclass
class Advantages:
    values: torch.Tensor  # [B] float32
    fallback: torch.Tensor  # [B] bool: the sample's advantage did not use its own prompt's statistics

    @property
    def fallback_share(self) -> float:
        """Share of samples whose advantage used a fallback (0 = every one had its prompt's baseline)."""
        return float(self.fallback.float().mean()) if self.fallback.numel() else 0.0


def group_normalize(rewards: torch.Tensor, keys: Sequence[str], eps: float = EPS) -> torch.Tensor:
    """Normalises each reward [B] against the rewards of the same key (prompt) in this batch.
    A key seen once gets advantage 0."""
    return group_advantages(rewards, keys, eps).values


def group_advantages(rewards: torch.Tensor, keys: Sequence[str], eps: float = EPS) -> Advantages:
    """`group_normalize` with its fallback: a key seen once has no baseline (advantage 0)."""
    if len(keys) != rewards.shape[0]:
        raise ValueError(f"got {rewards.shape[0]} rewards but {len(keys)} keys")
    rewards = rewards.double()
    advantages = torch.zeros_like(rewards)
    fallback = torch.zeros(len(keys), dtype=torch.bool)
    for key in dict.fromkeys(keys):
        rows = torch.tensor([k == key for k in keys])
        group = rewards[rows]
        advantages[rows] = _normalised(group, group.mean(), group.std(unbiased=False), eps)
        fallback[rows] = len(group) < 2
    return Advantages(advantages.float(), fallback)


def batch_advantages(rewards: torch.Tensor, eps: float = EPS) -> Advantages:
    """`batch_normalize`; every sample counts as a fallback (no per-prompt baseline at all)."""
    return Advantages(batch_normalize(rewards, eps), torch.ones(rewards.shape[0], dtype=torch.bool))


def _fallback_stats(values: torch.Tensor, rows: torch.Tensor, splits: Sequence[str] | None):
    """Mean and std of the batch's rewards in the split of `rows` (>= 2 of them), else of the batch."""
    pool = values
    if splits is not None:
        split = splits[int(rows.nonzero()[0])]
        same = values[torch.tensor([s == split for s in splits])]
        pool = same if len(same) >= 2 else values
    return pool.mean(), pool.std(unbiased=False)


def clip_advantages(advantages: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Clamps advantages to [-limit, limit] (None: unchanged)."""
    if limit is None:
        return advantages
    if limit <= 0:
        raise ValueError(f"advantage clip limit must be > 0, got {limit}")
    return advantages.clamp(-limit, limit)


class PerPromptStatTracker:
    """Running reward statistics per prompt.

    `normalize(prompts, rewards)` first adds the rewards to each prompt's buffer (the
    newest `buffer_size`), then normalises each reward with its prompt's buffer mean
    and std. Until a prompt has `min_count` rewards, a fallback stands in: the mean and
    std of the batch's rewards of the same split (`splits`, e.g. identifier / plain, when
    that split has at least two), else of the whole batch. State is plain lists, for
    checkpoints.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def normalize(self, prompts: Sequence[str], rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
        """Advantages [B] for rewards [B]; updates the buffers."""
        return self.advantages(prompts, rewards, eps=eps).values

    def advantages(self, prompts: Sequence[str], rewards: torch.Tensor, splits: Sequence[str] | None = None,
                   eps: float = EPS) -> Advantages:
        """Advantages for rewards [B] and which of them fell back; updates the buffers."""
        if len(prompts) != rewards.shape[0] or (splits is not None and len(splits) != len(prompts)):
            raise ValueError(f"got {rewards.shape[0]} rewards but {len(prompts)} prompts")
        values = rewards.double()
        for prompt, reward in zip(prompts, values.tolist()):
            self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size)).append(reward)
        advantages = torch.empty_like(values)
        fallback = torch.zeros(len(prompts), dtype=torch.bool)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([p == prompt for p in prompts])
            seen = torch.tensor(list(self.buffers[prompt]), dtype=torch.float64)
            if len(seen) >= self.min_count:
                mean, std = seen.mean(), seen.std(unbiased=False)
            else:
                mean, std = _fallback_stats(values, rows, splits)
                fallback[rows] = True
            advantages[rows] = _normalised(values[rows], mean, std, eps)
        return Advantages(advantages.float(), fallback)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per prompt: mean, std and count of the buffered rewards."""
        out = {}
        for prompt, buffer in self.buffers.items():
            seen = torch.tensor(list(buffer), dtype=torch.float64)
            out[prompt] = {"mean": seen.mean().item(), "std": seen.std(unbiased=False).item(), "count": len(buffer)}
        return out

    def clear(self) -> None:
        self.buffers.clear()

    def state_dict(self) -> dict:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {p: list(b) for p, b in self.buffers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = int(state["buffer_size"]), int(state["min_count"])
        self.buffers = {p: deque(map(float, b), maxlen=self.buffer_size) for p, b in state["buffers"].items()}
