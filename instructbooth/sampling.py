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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler

from .components import SDComponents
from .encoding import decode_latents, encode_prompts, latent_shape

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
Denoiser = Callable[[torch.Tensor, "int | torch.Tensor"], torch.Tensor]  # (x_t, t: int or [B]) -> output, float32


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


def guided_noise_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: int | torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float,
) -> torch.Tensor:
    """UNet output with classifier-free guidance, both branches in one batched call.

    latents [B, C, h, w]; timesteps int or [B]; cond [B, L, D]; uncond [B or 1, L, D].
    With guidance == 1 (or no uncond) only the conditional branch runs.
    """
    batch = latents.shape[0]
    dtype = next(unet.parameters()).dtype
    t = torch.as_tensor(timesteps, device=latents.device).expand(batch)
    if uncond is None or guidance == 1.0:
        return unet(latents.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
    uncond = uncond.expand(batch, -1, -1)
    both = unet(
        torch.cat([latents, latents]).to(dtype),
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([uncond, cond]).to(dtype),
    ).sample.float()
    out_uncond, out_cond = both.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


def guided_denoiser(unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None,
                    guidance: float) -> Denoiser:
    """The UNet under classifier-free guidance for the prompts `cond` [B, L, D] (see
    `guided_noise_prediction`), as a denoiser of x_t [B, C, h, w] at t."""
    return lambda x, t: guided_noise_prediction(unet, x, t, cond, uncond, guidance)


def rescore_step(denoiser: Denoiser, schedule: "DDIMSchedule", x_t: torch.Tensor, t: int | torch.Tensor,
                 x_prev: torch.Tensor, eta: float) -> tuple[DDIMStep, torch.Tensor]:
    """A stored step x_t -> x_prev under `denoiser` now: (the step's Gaussian, log p(x_prev) [B]),
    with gradients through the denoiser (RL's policy-gradient update)."""
    step = ddim_step(schedule, denoiser(x_t, t), t, x_t, eta, prev_sample=x_prev)
    return step, gaussian_log_prob(x_prev, step.mean, step.std)


@dataclass
class DDIMRun:
    """What `run_ddim` returns: the final latents, and with `keep` every latent and log-probability."""

    final: torch.Tensor  # [B, C, h, w] x_0
    latents: list[torch.Tensor]  # x_T ... x_0 (with keep), else []
    log_probs: list[torch.Tensor]  # [B] per step (with keep), else []


def run_ddim(denoiser: Denoiser, noise: "SampleNoise", schedule: "DDIMSchedule", eta: float,
             keep: bool = False) -> DDIMRun:
    """The DDIM sampler: x_T from `noise`, then one `ddim_step` per timestep of `schedule`,
    each drawing its noise (a draw per step also at eta 0, so the draws line up for any eta).
    `keep` records each latent and the log-probability of each step (needs eta > 0)."""
    x = noise.next()
    run = DDIMRun(x, [x] if keep else [], [])
    for t in schedule.timesteps.tolist():
        step_noise = noise.next()
        step = ddim_step(schedule, denoiser(x, t), t, x, eta, noise=step_noise if eta > 0 else None)
        x = step.prev_sample
        if keep:
            run.latents.append(x)
            run.log_probs.append(gaussian_log_prob(x.detach(), step.mean, step.std))
    run.final = x
    return run


class PromptEmbeddingCache:
    """Text-encoder outputs per prompt, computed once. Valid while the text encoder is
    unchanged (RL trains UNet LoRA only); call `clear()` after changing it."""

    def __init__(self, components: SDComponents):
        self.components = components
        self._embeddings: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 77, D] embeddings of `prompts` (encoding only the ones not seen before)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._embeddings))
        if missing:
            with torch.no_grad():
                encoded = encode_prompts(self.components, missing)
            self._embeddings.update(zip(missing, encoded))
        return torch.stack([self._embeddings[p] for p in prompts])

    def clear(self) -> None:
        self._embeddings.clear()

    def __len__(self) -> int:
        return len(self._embeddings)


@dataclass
class Trajectories:
    """Sampled denoising chains, everything DDPO training needs."""

    latents: torch.Tensor  # [B, S+1, C, h, w] float32, x_T (pure noise) ... x_0
    log_probs: torch.Tensor  # [B, S] log p(latents[:, i+1] | latents[:, i]) under the sampler
    timesteps: torch.Tensor  # [S] long, the UNet timestep of step i (shared by the batch)
    prompt_embeds: torch.Tensor  # [B, L, D] conditioning each sample was drawn with
    prompts: list[str]  # [B]
    seeds: list[int]  # [B] the seed of each sample's noise
    prompt_ids: torch.Tensor | None = None  # [B] long, caller's index of each prompt (e.g. into a prompt set)

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]  # [B, C, h, w]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> "Trajectories":
        """The samples at `index` (a sub-batch or a permutation)."""
        index = torch.as_tensor(index, dtype=torch.long)
        on = index.to(self.latents.device)
        return Trajectories(
            latents=self.latents[on],
            log_probs=self.log_probs[on],
            timesteps=self.timesteps,
            prompt_embeds=self.prompt_embeds[on],
            prompts=[self.prompts[i] for i in index.tolist()],
            seeds=[self.seeds[i] for i in index.tolist()],
            prompt_ids=None if self.prompt_ids is None else self.prompt_ids[index.to(self.prompt_ids.device)],
        )

    @staticmethod
    def cat(parts: Sequence["Trajectories"]) -> "Trajectories":
        if not parts:
            raise ValueError("Trajectories.cat needs at least one part")
        ids = [p.prompt_ids for p in parts]
        return Trajectories(
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            timesteps=parts[0].timesteps,
            prompt_embeds=torch.cat([p.prompt_embeds for p in parts]),
            prompts=[q for p in parts for q in p.prompts],
            seeds=[s for p in parts for s in p.seeds],
            prompt_ids=None if any(i is None for i in ids) else torch.cat(ids),
        )


class SampleNoise:
    """Standard normal noise for a batch where sample i draws from its own generator
    seeded with seeds[i]: first its starting latent, then one draw per step."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device):
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.shape, self.device = tuple(shape), device

    def next(self) -> torch.Tensor:  # [B, *shape]
        draws = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


def sample_trajectories(
    components: SDComponents,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_steps: int = 50,
    guidance: float = 5.0,
    eta: float = 1.0,
    height: int = 512,
    width: int = 512,
    negative_prompt: str = "",
    embeddings: PromptEmbeddingCache | None = None,
    prompt_ids: torch.Tensor | None = None,
    schedule: DDIMSchedule | None = None,
) -> Trajectories:
    """Runs the DDIM sampler (no gradients) and keeps each step's latent and log-probability.

    One sample per (prompt, seed). `embeddings` caches text-encoder outputs across calls;
    `schedule` (default: `ddim_schedule(components.scheduler, num_steps)`) may be passed
    to avoid rebuilding it.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if eta <= 0:
        raise ValueError(f"trajectories need a stochastic sampler for log-probabilities: eta must be > 0, got {eta}")
    embeddings = embeddings or PromptEmbeddingCache(components)
    schedule = schedule or ddim_schedule(components.scheduler, num_steps)
    device = components.device
    cond = embeddings(list(prompts)).to(device)  # [B, L, D]
    uncond = embeddings([negative_prompt]).to(device) if guidance != 1.0 else None  # [1, L, D]
    noise = SampleNoise(seeds, latent_shape(components, height, width), device)

    with torch.no_grad():
        run = run_ddim(guided_denoiser(components.unet, cond, uncond, guidance), noise, schedule, eta, keep=True)
    return Trajectories(
        latents=torch.stack(run.latents, dim=1),
        log_probs=torch.stack(run.log_probs, dim=1),
        timesteps=schedule.timesteps.clone(),
        prompt_embeds=cond,
        prompts=list(prompts),
        seeds=[int(s) for s in seeds],
        prompt_ids=prompt_ids,
    )


def sample_images(
    components: SDComponents,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_steps: int = 50,
    guidance: float = 5.0,
    eta: float = 1.0,
    height: int = 512,
    width: int = 512,
    negative_prompt: str = "",
    embeddings: PromptEmbeddingCache | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1], one per (prompt, seed); eta 0 is plain DDIM.

    Draws the same noise as `sample_trajectories`, so with eta > 0 the images equal the
    decoded final latents of the trajectories for the same prompts and seeds.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    embeddings = embeddings or PromptEmbeddingCache(components)
    schedule = ddim_schedule(components.scheduler, num_steps)
    device = components.device
    cond = embeddings(list(prompts)).to(device)
    uncond = embeddings([negative_prompt]).to(device) if guidance != 1.0 else None
    noise = SampleNoise(seeds, latent_shape(components, height, width), device)
    with torch.no_grad():
        run = run_ddim(guided_denoiser(components.unet, cond, uncond, guidance), noise, schedule, eta)
        return decode_latents(components, run.final)
