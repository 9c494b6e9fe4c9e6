"""One micro-batch's loss and backward pass, for DDPO and for reward-weighted fine-tuning.

These accumulate gradients into the LoRA parameters, each loss times `scale` (1 / the
micro-batches per optimizer step, so the accumulated gradient is the mean over all of
their samples); the trainer averages them over processes and steps the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..sampling import Trajectories, guided_denoiser, rescore_step
from ..seeds import generator_for
from .context import RunContext
from .ddpo import ddpo_loss, gaussian_step_kl
from .rwr import rwr_loss
from ..training import draw_noise, noised


Backward = Callable[[torch.Tensor], None]  # back-propagates a loss (Precision.backward, GradientRecorder.backward)


@dataclass(frozen=True)
class Regulariser:
    """RWR's regulariser data: images the model keeps denoising well (the beta term), each with its
    prompt (Lee et al.: pre-training data; the subject photos with "a photo of sks plushie" by
    default; class images with the class prompt; a captioned folder)."""

    latents: torch.Tensor  # [P, C, h, w] VAE latents (float32, on the training device)
    prompts: tuple[str, ...]  # [P] the prompt of each image


@dataclass
class StepStats:
    """Averages over a minibatch (and its trained timesteps)."""

    loss: float
    clip_fraction: float = 0.0
    approx_kl: float = 0.0
    kl_penalty: float = 0.0  # DDPO: KL to the reference per step, averaged over the minibatch
    weighted: float = 0.0  # RWR: reward-weighted denoising loss
    prior: float = 0.0  # RWR: denoising loss on the subject images


def ddpo_update(
    ctx: RunContext,
    samples: Trajectories,
    rows: torch.Tensor,
    step_index: torch.Tensor,
    advantages: torch.Tensor,
    identifier: torch.Tensor,
    scale: float = 1.0,
    backward: Backward | None = None,
) -> StepStats:
    """DDPO on the samples at `rows` [m]: for each column j of step_index [m, K] (a step of
    each trajectory), re-score that step under the current model and back-propagate the
    clipped surrogate (plus the KL guard on identifier samples), times scale / K, with
    `backward` (default `ctx.precision.backward`; a GradientRecorder's in a worker thread)."""
    config, device = ctx.config, ctx.device
    uncond = ctx.uncond()
    rows_dev = rows.to(device)
    embeds = samples.prompt_embeds[rows_dev]  # [m, L, D]
    denoiser = guided_denoiser(ctx.components.unet, embeds, uncond, config.guidance)
    adv = advantages.to(device)
    kl_rows = identifier.to(device) if config.kl_weight > 0 else torch.zeros(len(rows), dtype=torch.bool, device=device)
    steps = step_index.shape[1]
    totals = torch.zeros(4)  # loss, clip fraction, approx kl, kl penalty
    for j in range(steps):
        index = step_index[:, j].to(device)  # [m] step of each sample
        x_t, x_prev = samples.latents[rows_dev, index], samples.latents[rows_dev, index + 1]  # [m, C, h, w]
        timesteps = samples.timesteps.to(device)[index]  # [m]
        with ctx.precision.autocast():
            step, log_prob = rescore_step(denoiser, ctx.schedule, x_t, timesteps, x_prev, config.eta)  # log_prob [m]
        policy = ddpo_loss(log_prob, samples.log_probs[rows_dev, index], adv, config.clip_range)
        penalty = _kl_penalty(ctx, step, x_t, timesteps, embeds, uncond, kl_rows)
        loss = policy.loss + config.kl_weight * penalty
        (backward or ctx.precision.backward)(loss * (scale / steps))
        totals += torch.tensor([loss.item(), policy.clip_fraction.item(), policy.approx_kl.item(), penalty.item()])
    loss, clip_fraction, approx_kl, kl = (totals / steps).tolist()
    return StepStats(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl, kl_penalty=kl)


def _kl_penalty(ctx, step, x_t, timesteps, embeds, uncond, rows: torch.Tensor) -> torch.Tensor:
    """Mean over the minibatch of KL(policy step || reference step), counted on `rows` only."""
    if not bool(rows.any()):
        return torch.zeros((), device=x_t.device)
    reference = guided_denoiser(ctx.components.unet, embeds[rows], uncond, ctx.config.guidance)
    with torch.no_grad(), ctx.policy.reference(), ctx.precision.autocast():
        reference_step, _ = rescore_step(reference, ctx.schedule, x_t[rows], timesteps[rows], step.prev_sample[rows],
                                         ctx.config.eta)
    reference_mean = reference_step.mean
    kl = gaussian_step_kl(step.mean[rows], reference_mean, step.std[rows])  # [k]
    return kl.sum() / len(rows)


def noised_at_random(ctx: RunContext, latents: torch.Tensor, generator: torch.Generator):
    """(noisy latents, timesteps, target) for the denoising loss at uniform random timesteps."""
    noise, timesteps = draw_noise(ctx.components.scheduler, latents, generator)
    inputs, target = noised(ctx.components.scheduler, latents, noise, timesteps)
    return inputs, timesteps, target


def rwr_update(
    ctx: RunContext, samples: Trajectories, rows: torch.Tensor, weights: torch.Tensor, draw: tuple,
    scale: float = 1.0, slots: torch.Tensor | None = None, regulariser: Regulariser | None = None,
    backward: Backward | None = None,
) -> StepStats:
    """Reward-weighted denoising loss on the final latents at `rows` plus rwr_beta times
    the denoising loss on the regulariser's images, one batched UNet call, back-propagated times
    `scale`. `draw` names the optimizer step (epoch, inner epoch, update) and `slots` the
    micro-batch's places in it (default 0..m-1): noise follows each sample's seed and the
    subject image of each slot is fixed per step, so micro-batching does not change them."""
    config, device = ctx.config, ctx.device
    rows_dev = rows.to(device)
    slots = torch.arange(len(rows)) if slots is None else slots
    latents, embeds = samples.final_latents[rows_dev], samples.prompt_embeds[rows_dev]
    per_sample = [generator_for(config.seed, seed, *draw, "rwr") for seed in (samples.seeds[i] for i in rows.tolist())]
    parts = [noised_at_random(ctx, latents[i : i + 1], g) for i, g in enumerate(per_sample)]
    inputs, timesteps, targets = (torch.cat(p) for p in zip(*parts))
    prior = regulariser is not None and config.rwr_beta > 0
    if prior:
        p_inputs, p_timesteps, p_targets, p_prompts = _prior_batch(ctx, regulariser, slots, draw)
        inputs, timesteps = torch.cat([inputs, p_inputs]), torch.cat([timesteps, p_timesteps])
        subject = ctx.embeddings(p_prompts).to(device)
        embeds = torch.cat([embeds, subject])
    with ctx.precision.autocast():
        prediction = ctx.components.unet(inputs, timesteps, encoder_hidden_states=embeds).sample.float()
    m = len(rows)
    losses = rwr_loss(prediction[:m], targets, weights.to(device),
                      prediction[m:] if prior else None, p_targets if prior else None, config.rwr_beta)
    (backward or ctx.precision.backward)(losses.loss * scale)
    return StepStats(loss=losses.loss.item(), weighted=losses.weighted.item(), prior=losses.prior.item())


def _prior_batch(ctx: RunContext, regulariser: Regulariser, slots: torch.Tensor, draw: tuple):
    """The regulariser image of each slot of the optimizer step `draw` (a seeded permutation of
    the images, cycled), noised with the slot's own generator, and its prompt; the same on every
    process: (inputs, timesteps, targets, prompts)."""
    latents, total = regulariser.latents, len(regulariser.latents)
    order = torch.randperm(total, generator=generator_for(ctx.config.seed, *draw, "prior"))
    picked = [int(order[int(s) % total]) for s in slots]
    parts = [noised_at_random(ctx, latents[i].unsqueeze(0), generator_for(ctx.config.seed, *draw, int(s), "prior noise"))
             for i, s in zip(picked, slots)]
    inputs, timesteps, targets = (torch.cat(p) for p in zip(*parts))
    return inputs, timesteps, targets, [regulariser.prompts[i] for i in picked]
