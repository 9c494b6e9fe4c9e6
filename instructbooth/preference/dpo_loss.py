"""The Diffusion-DPO loss (Wallace et al. 2023, "Diffusion Model Alignment Using Direct
Preference Optimization"), as pure tensor functions.

For a pair (x_w preferred to x_l) under prompt c, both images are noised with the SAME
noise eps at the SAME timestep t. With per-sample denoising errors

    e   = mean over all elements of (target - prediction_theta(x_t, t, c))^2
    e_r = the same for the frozen reference model

(target = eps for SD1.5; the velocity for v-prediction models) the loss is

    delta = (e_w - e_r_w) - (e_l - e_r_l)
    loss  = -log sigmoid(-(beta / 2) * delta)        averaged over the pairs

i.e. the constant in front of delta is exactly beta / 2, with errors averaged (not
summed) over pixels: the paper's T * omega(lambda_t) weighting is folded into beta as in
its released code, so its beta carries over (5000 for SD1.5, 2500 for SDXL). delta < 0
means the model moved towards the winner relative to the reference; the implicit reward
margin of the pair is -(beta / 2) * delta. At the start of training model == reference,
delta = 0 and the loss is log 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BETA_SCALE = 0.5  # loss = -log sigmoid(-BETA_SCALE * beta * delta)


def preference_delta(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor,
                     ref_l: torch.Tensor) -> torch.Tensor:
    """delta [B] = (e_w - e_ref_w) - (e_l - e_ref_l); the reference errors are constants."""
    return (model_w - ref_w.detach()) - (model_l - ref_l.detach())


def implicit_accuracy(delta: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose implicit reward prefers the winner (delta < 0), ties counting
    half: exactly 0.5 when the model equals the reference."""
    delta = delta.detach()
    return ((delta < 0).double() + 0.5 * (delta == 0).double()).mean()


@dataclass
class DPOLoss:
    loss: torch.Tensor  # scalar to minimise: mean of -log sigmoid(-(beta/2) delta)
    delta: torch.Tensor  # [B] detached, (e_w - e_ref_w) - (e_l - e_ref_l)
    implicit_accuracy: torch.Tensor  # scalar, share of pairs with delta < 0 (ties: one half)
    reward_margin: torch.Tensor  # scalar, mean implicit reward margin -(beta/2) delta


def diffusion_dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
                       beta: float) -> DPOLoss:
    """The Diffusion-DPO loss from per-pair denoising errors [B] (see the module doc).

    model_w, model_l carry the gradient; ref_w, ref_l are the frozen reference's errors.
    Larger beta keeps the model closer to the reference (a sharper, smaller step)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (Diffusion-DPO uses 5000 for SD1.5), got {beta}")
    shapes = {tuple(t.shape) for t in (model_w, model_l, ref_w, ref_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"diffusion_dpo_loss takes four error vectors of one shape [B], got {sorted(shapes)}")
    delta = preference_delta(model_w, model_l, ref_w, ref_l)
    logits = -BETA_SCALE * beta * delta
    loss = -F.logsigmoid(logits).mean()
    detached = delta.detach()
    return DPOLoss(loss=loss, delta=detached, implicit_accuracy=implicit_accuracy(detached),
                   reward_margin=(-BETA_SCALE * beta * detached).mean())
