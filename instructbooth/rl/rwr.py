"""Reward-weighted fine-tuning (Lee et al. 2023, "Aligning Text-to-Image Models using
Human Feedback"): the ordinary denoising loss on model samples, each sample weighted by
its reward, plus beta times the denoising loss on regulariser images (Lee et al.: pre-training
data; here the subject's photos by default, or class images / a captioned folder) to keep
the model from drifting.

Weightings: "reward" is Lee et al.'s (the reward itself, clamped at 0, not renormalised per
epoch: a learned reward in [0, 1] such as `learned:` weights good samples ~1 and bad ones ~0);
"exp" (B softmax(r / T), classic reward-weighted regression) and "linear" (rewards shifted to
start at 0, mean 1) renormalise every epoch, so they suit rewards of any scale (ImageReward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHTINGS = ("exp", "linear", "reward")


def reward_weights(rewards: torch.Tensor, weighting: str = "exp", temperature: float = 1.0) -> torch.Tensor:
    """Non-negative weights [B] from rewards [B]; mean 1 except for "reward".

    "exp": B * softmax(r / temperature), the classic reward-weighted regression weights
    (lower temperature: sharper preference for the best samples). "linear": rewards
    shifted to start at 0 and scaled to mean 1 (Lee et al. weight by the reward itself;
    the shift makes rewards of any sign usable). All-equal rewards give weight 1 each.
    "reward": Lee et al.'s weights, the rewards themselves clamped at 0 (not renormalised).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    rewards = rewards.double()
    count = rewards.shape[0]
    if weighting == "reward":
        return rewards.clamp(min=0).float()
    if weighting == "exp":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return (count * torch.softmax(rewards / temperature, dim=0)).float()
    shifted = rewards - rewards.min()
    total = shifted.sum()
    if total <= 0:
        return torch.ones(count)
    return (count * shifted / total).float()


def denoising_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample [B] (over all but the batch dim), in float32."""
    error = (prediction.float() - target.float()) ** 2
    return error.mean(dim=tuple(range(1, error.ndim)))


@dataclass
class RWRLoss:
    loss: torch.Tensor  # scalar, weighted + rwr_beta * prior
    weighted: torch.Tensor  # scalar, mean of weight * per-sample denoising error on model samples
    prior: torch.Tensor  # scalar, denoising error on the subject images (0 without them)


def rwr_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    prior_prediction: torch.Tensor | None = None,
    prior_target: torch.Tensor | None = None,
    rwr_beta: float = 0.0,
) -> RWRLoss:
    """prediction, target [B, C, h, w] on model samples with weights [B]; optional
    prior_prediction, prior_target [P, C, h, w] on the personalization images."""
    weighted = (weights.detach().to(prediction.device) * denoising_error(prediction, target)).mean()
    if prior_prediction is None or rwr_beta == 0.0:
        prior = torch.zeros((), device=prediction.device)
    else:
        prior = denoising_error(prior_prediction, prior_target).mean()
    return RWRLoss(loss=weighted + rwr_beta * prior, weighted=weighted, prior=prior)
