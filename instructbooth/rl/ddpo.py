"""DDPO's loss (Black et al. 2023, DDPO_IS): a PPO-style clipped importance-sampled
policy gradient, one denoising step at a time.

The log-probabilities are per-dimension averages (see `sampling.gaussian_log_prob`),
so the ratio exp(log p_new - log p_old) moves very little per update and the default
clip range is 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DDPOLoss:
    loss: torch.Tensor  # scalar, to minimise
    clip_fraction: torch.Tensor  # scalar, share of samples whose ratio left [1 - clip, 1 + clip]
    approx_kl: torch.Tensor  # scalar, 0.5 * mean((log p_new - log p_old)^2), a KL estimate between old and new policy


def ddpo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> DDPOLoss:
    """Clipped surrogate for one step: mean over the batch of
    max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)), ratio = exp(log_prob - old_log_prob).

    log_prob [B] carries the gradient; old_log_prob and advantages [B] are constants.
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    old_log_prob, advantages = old_log_prob.detach(), advantages.detach()
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return DDPOLoss(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


def gaussian_step_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(reference_mean, std^2)) of one denoising step, per dimension
    averaged over all but the batch dim -> [B]. Both policies share the step's std, so the
    KL is the squared distance of the means over 2 std^2 (the subject guard's penalty)."""
    per_dim = (mean - reference_mean) ** 2 / (2 * std**2)
    return per_dim.mean(dim=tuple(range(1, mean.ndim)))
