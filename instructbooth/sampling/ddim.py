"""The stochastic DDIM step as a Gaussian policy, pure and in float32.

DDPO (Black et al. 2023) treats each denoising step x_t -> x_{t-1} as an action drawn from
N(mean_theta(x_t, t), sigma_t^2 I). `ddim_step` is that step: its mean is exactly diffusers'
`DDIMScheduler.step` and its standard deviation is eta times DDIM's sigma_t (eta = 1 gives
DDPM's posterior variance); `gaussian_log_prob` scores a draw. Float32 always: DDPO's clip range
of 1e-4 on the likelihood ratio is far below what half precision resolves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from diffusers import DDIMScheduler

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class DDIMSchedule:
    """The discrete steps of a DDIM sampler and the noise levels they need."""

    timesteps: torch.Tensor  # [S] long, descending (SD1.5, S=10: 901, 801, ..., 1)
    alphas_cumprod: torch.Tensor  # [T] float32, alpha-bar of each training timestep
    final_alpha_cumprod: float  # alpha-bar after the last step (alphas_cumprod[0] for SD1.5)
    step_ratio: int  # T // S; a step goes from t to t - step_ratio, as in diffusers
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction"
    clip_sample_range: float | None = None  # clamp of the predicted x_0 (None: no clamp; SD1.5)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def to(self, device: torch.device | str) -> "DDIMSchedule":
        return replace(self, timesteps=self.timesteps.to(device), alphas_cumprod=self.alphas_cumprod.to(device))

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """alpha-bar at each timestep [B] (negative timesteps: the final alpha-bar)."""
        inside = self.alphas_cumprod[timesteps.clamp(min=0)]
        return torch.where(timesteps >= 0, inside, torch.full_like(inside, self.final_alpha_cumprod))


def ddim_schedule(scheduler, num_steps: int) -> DDIMSchedule:
    """The DDIM schedule diffusers would use for `scheduler`'s config and `num_steps`.

    `scheduler` is any diffusers scheduler with SD-style config (beta schedule,
    timestep spacing, steps offset); SDComponents carry SD1.5's DDPM one.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    ddim = DDIMScheduler.from_config(scheduler.config)
    if ddim.config.thresholding:
        raise ValueError("dynamic thresholding is not supported by ddim_step_with_logprob; use a config without it")
    if ddim.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {ddim.config.prediction_type!r} not supported; "
                         "use 'epsilon' or 'v_prediction'")
    ddim.set_timesteps(num_steps)
    clip = float(ddim.config.clip_sample_range) if ddim.config.clip_sample else None
    return DDIMSchedule(
        timesteps=ddim.timesteps.clone().long(),
        alphas_cumprod=ddim.alphas_cumprod.clone().float(),
        final_alpha_cumprod=float(ddim.final_alpha_cumprod),
        step_ratio=ddim.config.num_train_timesteps // num_steps,
        prediction_type=ddim.config.prediction_type,
        clip_sample_range=clip,
    )


@dataclass
class DDIMStep:
    """One DDIM step: the Gaussian it draws from and the draw."""

    prev_sample: torch.Tensor  # [B, C, h, w] x_{t-1}
    mean: torch.Tensor  # [B, C, h, w] diffusers' DDIM step without noise
    std: torch.Tensor  # [B, 1, 1, 1] eta * sigma_t
    pred_original_sample: torch.Tensor  # [B, C, h, w] predicted x_0


def ddim_step(
    schedule: DDIMSchedule,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> DDIMStep:
    """DDIM's step (Song et al. 2021, eq. 12 and 16) from x_t to x_{t-1}, in float32.

    model_output, sample: [B, C, h, w]; timestep: an int or [B] long (one per sample).
    The next sample is `prev_sample` when given (to score a stored trajectory), else
    mean + std * noise (noise [B, C, h, w] standard normal; may be None when eta == 0).
    """
    model_output, sample = model_output.float(), sample.float()
    batch = sample.shape[0]
    t = torch.as_tensor(timestep, device=sample.device, dtype=torch.long).expand(batch)  # [B]
    sched = schedule if schedule.alphas_cumprod.device == sample.device else schedule.to(sample.device)
    alpha_t = sched.alpha_bar(t).view(batch, 1, 1, 1)
    alpha_prev = sched.alpha_bar(t - schedule.step_ratio).view(batch, 1, 1, 1)
    beta_t = 1 - alpha_t

    if schedule.prediction_type == "epsilon":
        pred_x0 = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
        pred_eps = model_output
    else:  # v_prediction
        pred_x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
        pred_eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
    if schedule.clip_sample_range is not None:
        pred_x0 = pred_x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)

    variance = (1 - alpha_prev) / beta_t * (1 - alpha_t / alpha_prev)  # sigma_t^2 at eta = 1
    std = eta * variance.sqrt()  # [B, 1, 1, 1]
    direction = (1 - alpha_prev - std**2).sqrt() * pred_eps
    mean = alpha_prev.sqrt() * pred_x0 + direction

    if prev_sample is None:
        if noise is None and eta != 0:
            raise ValueError("ddim_step with eta > 0 needs `noise` (standard normal, shaped like the sample)")
        prev_sample = mean if noise is None else mean + std * noise.to(mean)
    return DDIMStep(prev_sample=prev_sample.float(), mean=mean, std=std, pred_original_sample=pred_x0)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of x under N(mean, std^2) per element, averaged over all but the batch dim -> [B].

    The average (not the sum) follows DDPO: the likelihood ratio exp(log p - log q) is
    then per dimension, which is what its clip range of 1e-4 is tuned for.
    """
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def ddim_step_with_logprob(
    schedule: DDIMSchedule,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t-1} [B, C, h, w], its log-probability under the step's Gaussian [B]).

    Give `noise` to sample, or `prev_sample` to score a stored step (then x_{t-1} is
    returned unchanged and the log-probability carries the gradient of model_output).
    """
    if eta <= 0:
        raise ValueError(f"log-probabilities need a stochastic step: eta must be > 0, got {eta}")
    step = ddim_step(schedule, model_output, timestep, sample, eta, noise=noise, prev_sample=prev_sample)
    return step.prev_sample, gaussian_log_prob(step.prev_sample.detach(), step.mean, step.std)
