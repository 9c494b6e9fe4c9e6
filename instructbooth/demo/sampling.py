"""Sampling images from the demo model: stochastic DDIM (eta 1), optional classifier-free guidance.

Eta 1 is the ancestral DDPM step on a strided schedule, as DDPO samples. Measured on the
shipped model (one image per caption): guidance 1 and 1.5 score alike, 2 and more
oversaturate (v-prediction with zero terminal SNR); 25 steps score like 50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from ..components import SDComponents
from ..encoding import decode_latents, encode_prompts, latent_shape
from .world import IMAGE_SIZE


@dataclass(frozen=True)
class SamplerConfig:
    """How demo images are sampled."""

    steps: int = 50  # denoising steps
    guidance: float = 1.0  # classifier-free guidance scale (1 = none: one UNet call per step)
    eta: float = 1.0  # DDIM noise: 1 = ancestral (stochastic), 0 = deterministic
    batch_size: int = 64  # prompts per UNet call (the call itself is twice this with guidance)


def ddim_scheduler(components: SDComponents, steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample(
    components: SDComponents,
    prompts: list[str],
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images [B, 3, 32, 32] in [0, 1] for `prompts` (noise drawn on the CPU from `generator`)."""
    chunks = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    return torch.cat([_sample_chunk(components, chunk, config, generator) for chunk in chunks])


def _sample_chunk(components, prompts, config, generator) -> torch.Tensor:
    device = components.device
    dtype = next(components.unet.parameters()).dtype
    scheduler = ddim_scheduler(components, config.steps)
    guided = config.guidance != 1.0
    context = encode_prompts(components, list(prompts) + ([""] * len(prompts) if guided else []))
    shape = (len(prompts), *latent_shape(components, IMAGE_SIZE, IMAGE_SIZE))
    latents = torch.randn(shape, generator=generator).to(device, dtype)
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        eps = components.unet(model_input, t.to(device), context).sample
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + config.guidance * (cond - uncond)
        noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
        latents = scheduler.step(eps, t, latents, eta=config.eta, variance_noise=noise).prev_sample
    return decode_latents(components, latents)
