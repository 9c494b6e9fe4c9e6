"""The one sampler: a denoiser (the UNet under classifier-free guidance), seeded noise per sample,
the DDIM loop, and what it returns for images and for RL's trajectories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..components import SDComponents
from ..encoding import decode_latents, latent_shape
from .ddim import DDIMSchedule, DDIMStep, ddim_schedule, ddim_step, gaussian_log_prob
from .embeddings import PromptEmbeddingCache

Denoiser = Callable[[torch.Tensor, "int | torch.Tensor"], torch.Tensor]  # (x_t, t: int or [B]) -> output, float32


@dataclass(frozen=True)
class SamplerSettings:
    """How images are drawn: what every stage's config maps to (e.g. `RLConfig.sampler()`)."""

    num_steps: int = 50  # DDIM steps
    guidance: float = 5.0  # classifier-free guidance scale (1 = one UNet call per step, no negative prompt)
    eta: float = 1.0  # DDIM noise: 1 = ancestral (stochastic), 0 = deterministic DDIM
    height: int = 512  # pixels
    width: int = 512
    negative_prompt: str = ""  # the unconditional branch's prompt under guidance


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
    settings: SamplerSettings = SamplerSettings(),
    *,
    embeddings: PromptEmbeddingCache | None = None,
    prompt_ids: torch.Tensor | None = None,
    schedule: DDIMSchedule | None = None,
) -> Trajectories:
    """Runs the DDIM sampler (no gradients) and keeps each step's latent and log-probability.

    One sample per (prompt, seed). `embeddings` caches text-encoder outputs across calls;
    `schedule` (default: `ddim_schedule(components.scheduler, settings.num_steps)`) may be
    passed to avoid rebuilding it.
    """
    if settings.eta <= 0:
        raise ValueError("trajectories need a stochastic sampler for log-probabilities: eta must be > 0, "
                         f"got {settings.eta}")
    schedule = schedule or ddim_schedule(components.scheduler, settings.num_steps)
    denoiser, cond, noise = _prepare(components, prompts, seeds, settings, embeddings)
    with torch.no_grad():
        run = run_ddim(denoiser, noise, schedule, settings.eta, keep=True)
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
    settings: SamplerSettings = SamplerSettings(),
    *,
    embeddings: PromptEmbeddingCache | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1], one per (prompt, seed); eta 0 is plain DDIM.

    Draws the same noise as `sample_trajectories`, so with eta > 0 the images equal the
    decoded final latents of the trajectories for the same prompts and seeds.
    """
    denoiser, _, noise = _prepare(components, prompts, seeds, settings, embeddings)
    with torch.no_grad():
        run = run_ddim(denoiser, noise, ddim_schedule(components.scheduler, settings.num_steps), settings.eta)
        return decode_latents(components, run.final)


def _prepare(components: SDComponents, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings,
             embeddings: PromptEmbeddingCache | None):
    """(the guided denoiser, the prompts' embeddings [B, L, D], each sample's seeded noise)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    embeddings, device = embeddings or PromptEmbeddingCache(components), components.device
    cond = embeddings(list(prompts)).to(device)  # [B, L, D]
    guided = settings.guidance != 1.0
    uncond = embeddings([settings.negative_prompt]).to(device) if guided else None  # [1, L, D]
    noise = SampleNoise(seeds, latent_shape(components, settings.height, settings.width), device)
    return guided_denoiser(components.unet, cond, uncond, settings.guidance), cond, noise
