"""An epoch's data: sample trajectories from the current model, decode, score.

Every process draws the same global prompts and seeds (from generators derived from
the seed and epoch) and samples its own slice; rewards are gathered per sampling batch,
so the gathered rewards are in the same order as a single process would produce them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch

from ..encoding import decode_latents
from ..prompts import IDENTIFIER, DrawnPrompt, RLPrompts
from ..sampling import Trajectories, sample_images, sample_trajectories
from .config import RLConfig
from ..seeds import derive_seed, generator_for
from ..threads import in_order
from .context import RunContext


@dataclass
class EpochSamples:
    trajectories: Trajectories  # this process's samples, in local order
    drawn: list[DrawnPrompt]  # every process's prompts, in global order
    rewards: torch.Tensor  # [N] float32 CPU, global order (N = processes x samples per process)
    local_rows: torch.Tensor  # [n] long, where this process's samples sit in the global order
    subject_scores: list[float]  # subject measure of the identifier samples of all processes
    preview: torch.Tensor | None  # [3, H, W] this process's first image, for the step callback
    sample_seconds: float
    reward_seconds: float


def reward_metadata(ctx: RunContext, drawn: DrawnPrompt, seed: int) -> dict:
    subject = ctx.prompts.subject
    return {"prompt": drawn.text, "group": drawn.group, "template": ctx.prompts.templates[drawn.template],
            "seed": seed, "identifier": subject.identifier, "class_noun": subject.class_noun}


def score(ctx: RunContext, fn, images: torch.Tensor, prompts: list[str], metadata: list[dict], name: str) -> torch.Tensor:
    """Calls a reward-protocol function and checks its answer -> float32 [B] on the CPU."""
    values = torch.as_tensor(fn(images.float(), prompts, metadata)).detach().float().cpu().reshape(-1)
    if values.shape != (images.shape[0],):
        raise ValueError(f"the {name} returned {tuple(values.shape)} numbers for {images.shape[0]} images; "
                         "a reward returns one number per image, shape [B]")
    bad = (~values.isfinite()).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the {name} returned NaN or inf for {len(bad)} of {len(values)} images (e.g. prompt "
                         f"{prompts[bad[0]]!r}): check the reward model's weights and dtype (float32 is safest); "
                         "nothing was trained on them")
    return values


@torch.no_grad()
def collect_samples(ctx: RunContext, epoch: int) -> EpochSamples:
    """Samples the epoch's batches (`parallel_batches` at a time) and scores them in order."""
    config, processes = ctx.config, ctx.processes
    size, world = config.sample_batch_size, processes.world_size
    generator = generator_for(config.seed, epoch, "prompts")
    epoch_prompts = draw_epoch_prompts(ctx.prompts, config, config.sample_batches * world * size, generator)
    batches = []  # (every process's prompts, this process's prompts and seeds)
    for batch in range(config.sample_batches):
        drawn = epoch_prompts[batch * world * size:(batch + 1) * world * size]
        seeds = torch.randint(0, 2**62, (world * size,), generator=generator).tolist()
        mine = processes.local_slice(size)
        batches.append((drawn, drawn[mine], seeds[mine]))
        encode_once(ctx, [d.text for d in drawn[mine]])  # here, in this order: the cache as one batch at a time fills it
    parts, drawn_all, rewards, rows, subject_scores = [], [], [], [], []
    reward_seconds, preview, began = 0.0, None, time.perf_counter()
    jobs = [partial(_sample_batch, ctx, local, local_seeds) for _, local, local_seeds in batches]
    for batch, ((drawn, local, local_seeds), (trajectories, images)) in enumerate(
            zip(batches, in_order(jobs, config.parallel_batches))):
        middle = time.perf_counter()
        metadata = [reward_metadata(ctx, d, s) for d, s in zip(local, local_seeds)]
        local_rewards = score(ctx, ctx.reward_fn, images, [d.reward_text for d in local], metadata, "reward")
        subject_scores += _subject_scores(ctx, images, local, metadata)
        reward_seconds += time.perf_counter() - middle

        preview = images[0].float().cpu() if preview is None else preview
        parts.append(trajectories)
        drawn_all += drawn
        rewards.append(processes.gather(local_rewards))
        rows.append(batch * world * size + processes.rank * size + torch.arange(size))
    return EpochSamples(
        trajectories=Trajectories.cat(parts), drawn=drawn_all, rewards=torch.cat(rewards),
        local_rows=torch.cat(rows), subject_scores=processes.gather_objects(subject_scores), preview=preview,
        sample_seconds=time.perf_counter() - began - reward_seconds, reward_seconds=reward_seconds,
    )


def encode_once(ctx: RunContext, prompts: list[str]) -> None:
    """Puts the prompts (and, with guidance, the negative prompt) into the embedding cache as the
    sampler would, so that sampling threads only read it."""
    ctx.embeddings(prompts)
    if ctx.config.guidance != 1.0:
        ctx.embeddings([ctx.config.negative_prompt])


def _sample_batch(ctx: RunContext, local: list[DrawnPrompt], seeds: list[int]) -> tuple[Trajectories, torch.Tensor]:
    """One sampling batch's trajectories and decoded images (run in a worker thread or here)."""
    with torch.no_grad(), ctx.precision.autocast():
        trajectories = sample_trajectories(
            ctx.components, [d.text for d in local], seeds, ctx.config.sampler(), embeddings=ctx.embeddings,
            schedule=ctx.schedule, prompt_ids=torch.tensor([d.template for d in local]))
        return trajectories, decode_latents(ctx.components, trajectories.final_latents)


def draw_epoch_prompts(prompts: RLPrompts, config: RLConfig, count: int, generator: torch.Generator
                       ) -> list[DrawnPrompt]:
    """The epoch's `count` prompts: count / images_per_prompt drawn ones, each repeated in a
    row (so a prompt's images share a sampling batch). Drawn for the whole epoch at once,
    so the identifier ratio holds per epoch even with one prompt per sampling batch."""
    repeat = config.images_per_prompt
    drawn = prompts.draw(count // repeat, config.identifier_ratio, generator, config.use_description,
                         config.reward_plain_prompt)
    return [d for d in drawn for _ in range(repeat)]


def _subject_scores(ctx: RunContext, images: torch.Tensor, drawn: list[DrawnPrompt], metadata: list[dict]) -> list[float]:
    """The subject measure of this batch's identifier samples (empty without a measure)."""
    picked = [i for i, d in enumerate(drawn) if d.group == IDENTIFIER]
    if ctx.subject_measure is None or not picked:
        return []
    scores = score(ctx, ctx.subject_measure, images[picked], [drawn[i].text for i in picked],
                   [metadata[i] for i in picked], "subject measure")
    return scores.tolist()


@torch.no_grad()
def evaluate_heldout(ctx: RunContext) -> list[float]:
    """Rewards of the held-out prompts (with the identifier) at fixed seeds, all processes'."""
    config, processes = ctx.config, ctx.processes
    drawn = ctx.prompts.heldout_prompts(config.use_description, config.reward_plain_prompt)
    items = [(d, derive_seed(config.seed, "heldout", i, j))
             for i, d in enumerate(drawn) for j in range(config.heldout_seeds)]
    mine = items[processes.rank :: processes.world_size]
    rewards: list[float] = []
    for start in range(0, len(mine), config.sample_batch_size):
        chunk = mine[start : start + config.sample_batch_size]
        with ctx.precision.autocast():
            images = sample_images(ctx.components, [d.text for d, _ in chunk], [s for _, s in chunk], config.sampler(),
                                   embeddings=ctx.embeddings)
        metadata = [{"prompt": d.text, "group": d.group, "seed": s} for d, s in chunk]
        rewards += score(ctx, ctx.reward_fn, images, [d.reward_text for d, _ in chunk], metadata, "reward").tolist()
    return processes.gather_objects(rewards)
