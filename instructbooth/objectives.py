"""What a diffusion UNet is trained to predict, shared by every trainer."""

from __future__ import annotations

import torch


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet's regression target for x_t made from `latents` and `noise` at `timesteps`:
    the noise (epsilon models such as SD1.5) or the velocity (v-prediction models)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {kind!r} is not supported; use an epsilon or v-prediction model")
