"""From rewards to advantages: normalisation per prompt, per group or per batch, and clipping.

DDPO normalises each reward against the statistics of its own prompt, so that easy
prompts (high reward whatever the image) do not drown hard ones. The per-prompt
statistics come from a running buffer of that prompt's recent rewards (the stat
tracker), or from the current batch alone ("group" normalisation, GRPO-style).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import torch

EPS = 1e-6  # added to standard deviations before dividing


def _normalised(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
    return (values - mean) / (std + eps)


def batch_normalize(rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) over the whole batch [B] (population std)."""
    rewards = rewards.double()
    return _normalised(rewards, rewards.mean(), rewards.std(unbiased=False), eps).float()


def group_normalize(rewards: torch.Tensor, keys: Sequence[str], eps: float = EPS) -> torch.Tensor:
    """Normalises each reward [B] against the rewards of the same key (prompt) in this batch.
    A key seen once gets advantage 0."""
    if len(keys) != rewards.shape[0]:
        raise ValueError(f"got {rewards.shape[0]} rewards but {len(keys)} keys")
    rewards = rewards.double()
    advantages = torch.zeros_like(rewards)
    for key in dict.fromkeys(keys):
        rows = torch.tensor([k == key for k in keys])
        group = rewards[rows]
        advantages[rows] = _normalised(group, group.mean(), group.std(unbiased=False), eps)
    return advantages.float()


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
    and std. Until a prompt has `min_count` rewards, the whole batch's mean and std
    stand in. State is plain lists, for checkpoints.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def normalize(self, prompts: Sequence[str], rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
        """Advantages [B] for rewards [B]; updates the buffers."""
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"got {rewards.shape[0]} rewards but {len(prompts)} prompts")
        values = rewards.double()
        batch_mean, batch_std = values.mean(), values.std(unbiased=False)
        for prompt, reward in zip(prompts, values.tolist()):
            self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size)).append(reward)
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([p == prompt for p in prompts])
            seen = torch.tensor(list(self.buffers[prompt]), dtype=torch.float64)
            enough = len(seen) >= self.min_count
            mean, std = (seen.mean(), seen.std(unbiased=False)) if enough else (batch_mean, batch_std)
            advantages[rows] = _normalised(values[rows], mean, std, eps)
        return advantages.float()

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
