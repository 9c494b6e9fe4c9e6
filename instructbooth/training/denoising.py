"""The denoising objective every trainer shares: noise, timesteps, the UNet's target, per-sample error."""

from __future__ import annotations

import torch


def draw_noise(scheduler, latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise like `latents`, uniform training timesteps [B]), drawn in that order from the CPU
    `generator` (so a run is the same on every device), on the latents' device."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    return noise, timesteps.to(latents.device)


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet's regression target for x_t made from `latents` and `noise` at `timesteps`:
    the noise (epsilon models such as SD1.5) or the velocity (v-prediction models)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {kind!r} is not supported; use an epsilon or v-prediction model")


def noised(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, the UNet's target) for `latents` noised with `noise` at `timesteps`."""
    return scheduler.add_noise(latents, noise, timesteps), denoising_target(scheduler, latents, noise, timesteps)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error per sample [B], averaged over every element but the batch dim, float32
    (float64 inputs stay float64)."""
    dtype = torch.float64 if torch.float64 in (prediction.dtype, target.dtype) else torch.float32
    error = (prediction.to(dtype) - target.to(dtype)) ** 2
    return error.mean(dim=tuple(range(1, error.ndim)))
