"""Sampling with log-probabilities: the stochastic DDIM step seen as a Gaussian policy.

DDPO (Black et al. 2023) treats each denoising step x_t -> x_{t-1} as an action drawn
from N(mean_theta(x_t, t), sigma_t^2 I). `ddim_step_with_logprob` is that step as a pure
function: its mean is exactly diffusers' `DDIMScheduler.step` and its standard deviation
is eta times DDIM's sigma_t (eta = 1 gives DDPM's posterior variance). The step always
runs in float32: DDPO's clip range of 1e-4 on the likelihood ratio is far below what
half precision resolves.

One sampler, k-diffusion style: a `Denoiser` is a callable `(x_t [B, C, h, w], t) -> model
output` (`guided_denoiser` wraps a UNet with batched classifier-free guidance), and
`run_ddim(denoiser, noise, schedule, eta)` is the loop. `sample_images` (images, the demo,
class and validation images) and `sample_trajectories` (RL's samples: every latent, each
step's log-probability, the prompt embeddings) both run it, and RL's update re-scores a
stored step with `rescore_step` under the same denoiser. Every sample draws its noise from
its own seeded generator, so a sample is a function of (prompt, seed) alone: the same
whatever the batch it is in, the process that runs it or the device.

Modules: `ddim` (the schedule and the pure step with its log-probability), `sampler` (the
denoiser, the loop, images and trajectories), `embeddings` (the prompt-embedding cache).
"""

from .ddim import DDIMSchedule, DDIMStep, ddim_schedule, ddim_step, ddim_step_with_logprob, gaussian_log_prob
from .embeddings import PromptEmbeddingCache
from .sampler import (
    DDIMRun,
    Denoiser,
    SampleNoise,
    SamplerSettings,
    Trajectories,
    guided_denoiser,
    guided_noise_prediction,
    rescore_step,
    run_ddim,
    sample_images,
    sample_trajectories,
)

__all__ = [
    "DDIMRun", "DDIMSchedule", "DDIMStep", "Denoiser", "PromptEmbeddingCache", "SampleNoise", "SamplerSettings", "Trajectories",
    "ddim_schedule", "ddim_step", "ddim_step_with_logprob", "gaussian_log_prob", "guided_denoiser",
    "guided_noise_prediction", "rescore_step", "run_ddim", "sample_images", "sample_trajectories",
]
