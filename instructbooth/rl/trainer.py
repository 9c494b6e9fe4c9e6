"""`train_rl`: the epoch loop of RL fine-tuning (sample -> reward -> train).

Each epoch: draw prompts (the InstructBooth mix of identifier and plain prompts),
sample trajectories with the current model, score the decoded images, turn rewards
into advantages (DDPO) or weights (RWR), then train the LoRA on the epoch's samples
for `inner_epochs` passes. After every epoch: metrics (JSON + reward curve) and an
atomic checkpoint. The algorithm lives in `collect`, `updates`, `ddpo`, `rwr` and
`advantages`; this module is the loop and its bookkeeping.

Every random draw of an epoch comes from generators derived from (seed, epoch), so a
resumed CPU run ends with the same LoRA, bit for bit, and N processes draw exactly what
one process with N times the batch would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..components import SDComponents
from ..encoding import encode_images
from ..images import tensor_to_pil
from ..lora import LoraMetadata
from ..prompts import HELDOUT, IDENTIFIER, RLPrompts
from ..sampling import PromptEmbeddingCache, ddim_schedule
from ..subject_data import ImageSource, load_subject_images, training_photos
from ..threads import in_order
from ..training import (
    CheckpointStore,
    GradientRecorder,
    Precision,
    StepCallback,
    StepReport,
    adamw,
    check_resumable,
    gradient_checkpointing,
    guarded_step,
    non_finite_keys,
    notify,
    require_finite_weights,
    restore_trainer_state,
    state_fingerprint,
    trainer_state,
    training_mode,
)
from .advantages import PerPromptStatTracker
from .algorithms import Algorithm, make_algorithm, uses_regulariser
from .collect import EpochSamples, collect_samples, evaluate_heldout
from .config import RLConfig
from ..seeds import generator_for
from .context import RunContext
from .distributed import Processes
from .metrics import clear_metrics, group_stats, summarize, write_metrics
from .offline import OfflineRound
from .policy import Policy, State
from .updates import Regulariser, StepStats

STOP_FINISHED, STOP_CALLBACK, STOP_SUBJECT = "finished", "callback", "subject_guard"


@dataclass
class RLResult:
    lora_state: State  # ONE LoRA (kohya keys, float32 CPU): personalized + RL-trained, for ComfyUI's LoraLoader alone
    trained_state: State  # the RL-trained LoRA alone (continue mode: the continued personalized LoRA)
    metadata: LoraMetadata  # for `save_lora(path, result.lora_state, result.metadata)`
    metrics: list[dict]  # one entry per epoch (see rl/metrics.py)
    epochs_done: int
    stop_reason: str = STOP_FINISHED  # "finished", "callback" or "subject_guard"
    final_heldout: dict | None = None  # held-out reward stats of the returned LoRA (when evaluated)
    prompt_stats: dict = field(default_factory=dict)  # per-prompt reward mean/std/count (the stat tracker's buffers)
    last_checkpoint: Path | None = None


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    optimizer_steps: int = 0
    history: list[dict] = field(default_factory=list)
    previous: State | None = None  # the LoRA one epoch back (what the subject guard rolls back to)


def train_rl(
    components: SDComponents,
    reward_fn: Callable,
    prompts: RLPrompts,
    config: RLConfig = RLConfig(),
    callback: StepCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    base_lora: Mapping[str, torch.Tensor] | None = None,
    *,
    subject_images: ImageSource | None = None,
    subject_prompt: str | None = None,
    regulariser_images: ImageSource | None = None,
    subject_measure: Callable | None = None,
    base_model_hash: str = "",
) -> RLResult:
    """Fine-tunes `components` (+ the personalized `base_lora`) to maximise `reward_fn`.

    reward_fn / subject_measure: `(images [B,3,H,W] in [0,1], prompts, metadata) -> [B]`.
    `subject_images` (files, a folder or an image batch of any size; scaled and centre-cropped
    to the training size) with `subject_prompt` (default "a photo of
    <trigger phrase>") feed RWR's regulariser (the beta term), unless `regulariser_images` are
    given (class images, a captioned folder: a `.txt` beside an image is its prompt, else
    "a photo of a <class noun>"). `callback(StepReport)` runs after every
    optimizer step; returning False (or raising StopTraining) stops the run and returns
    the LoRA of the last completed epoch, which is also the last checkpoint. With a
    `checkpoint_dir`, every epoch writes a checkpoint, metrics.json and reward_curve.png
    there; `resume=True` continues from the newest checkpoint, `resume=False` starts over.
    Several processes (accelerate launch / torchrun / an initialised process group) share
    the sampling and average gradients. The components come back as they were, except
    that with mixed precision their frozen weights stay in 16 bits.
    """
    processes = Processes.current()
    _refuse_before_work(components, config, base_lora, subject_images is None and regulariser_images is None)
    store = CheckpointStore(checkpoint_dir, config.keep_checkpoints) if checkpoint_dir is not None else None
    if store is not None and not resume:
        if processes.is_main:
            store.clear()
            clear_metrics(checkpoint_dir)
        processes.barrier()
    with training_mode(components.modules()):  # all in eval: sampling and re-scoring stay identical
        policy = Policy.prepare(components, config, base_lora)
        try:
            precision = Precision.create(config.mixed_precision, components.device)
            precision.cast_frozen(components.modules(), policy.params)
            ctx = RunContext(
                components=components, policy=policy, config=config, prompts=prompts, reward_fn=reward_fn,
                processes=processes, precision=precision,
                schedule=ddim_schedule(components.scheduler, config.sample_steps).to(components.device),
                embeddings=PromptEmbeddingCache(components), subject_measure=subject_measure,
            )
            regulariser = _regulariser(ctx, subject_images, subject_prompt, regulariser_images)
            algorithm = make_algorithm(config, regulariser)
            with gradient_checkpointing([components.unet], config.gradient_checkpointing):
                return _run(ctx, algorithm, store, callback, checkpoint_dir, base_model_hash)
        finally:
            policy.release()


def _refuse_before_work(components: SDComponents, config: RLConfig, base_lora, no_regulariser_images: bool) -> None:
    require_finite_weights(components.modules(), "the base model")
    if config.parallel_batches > 1 and components.device.type != "cpu":
        raise ValueError(f"parallel_batches > 1 runs batches in CPU threads; the model is on {components.device}: "
                         "set parallel_batches=1")
    if base_lora is not None and non_finite_keys(base_lora):
        raise ValueError("the personalized LoRA holds NaN or inf weights: it was saved from a diverged run; "
                         "personalize again with a lower learning rate")
    if uses_regulariser(config) and no_regulariser_images:
        make_algorithm(config)  # refuses, naming the images the beta term needs


def _regulariser(ctx: RunContext, subject_images, subject_prompt, regulariser_images) -> Regulariser | None:
    """RWR's beta-term data: `regulariser_images` with their captions (else the class prompt), or
    the subject photos with `subject_prompt`; None without either, or without a beta term."""
    if not uses_regulariser(ctx.config) or (subject_images is None and regulariser_images is None):
        return None
    if regulariser_images is not None:
        class_prompt = f"a photo of {ctx.prompts.subject.plain_phrase}"
        captions = tuple(image.caption or class_prompt for image in load_subject_images(regulariser_images))
        return Regulariser(_encode_images(ctx, regulariser_images), captions)
    latents = _encode_images(ctx, subject_images)
    prompt = subject_prompt or f"a photo of {ctx.prompts.subject.trigger_phrase}"
    return Regulariser(latents, (prompt,) * len(latents))


def _encode_images(ctx: RunContext, images: ImageSource) -> torch.Tensor:
    pixels = training_photos(images, ctx.config.height, ctx.config.width)
    with torch.no_grad(), ctx.precision.autocast():
        latents = encode_images(ctx.components, pixels, generator=torch.Generator().manual_seed(ctx.config.seed))
    return latents.float().to(ctx.device)


def _run(ctx: RunContext, algorithm: Algorithm, store, callback, metrics_dir, base_model_hash) -> RLResult:
    config, processes = ctx.config, ctx.processes
    optimizer = adamw(ctx.policy.params, config)
    tracker = PerPromptStatTracker(config.tracker_buffer, config.tracker_min_count)
    fingerprint = state_fingerprint(ctx.policy.base_lora)
    state = RunState()
    saved = store.load() if store is not None else None
    if saved is not None:
        _restore(ctx, saved, optimizer, tracker, state, fingerprint)
    last = store.latest() if store is not None else None

    def finish(reason: str, trained: State, final_heldout: dict | None = None) -> RLResult:
        if metrics_dir is not None and processes.is_main:
            write_metrics(metrics_dir, state.history)
        metadata = _metadata(ctx, base_model_hash, state, reason)
        return RLResult(ctx.policy.one_file_state(trained), trained, metadata, state.history, state.epoch,
                        reason, final_heldout, tracker.stats(), last)

    offline = OfflineRound(Path(metrics_dir) if store is not None else None) if config.offline else None
    for epoch in range(state.epoch, config.epochs):
        start_state, began = ctx.policy.trained_state(), time.perf_counter()
        samples = offline.samples(ctx, epoch) if offline is not None else collect_samples(ctx, epoch)
        heldout, eval_seconds = _maybe_heldout(ctx, epoch)
        measure = summarize(samples.subject_scores)["mean"] if samples.subject_scores else None
        if config.subject_threshold is not None and measure is not None and measure < config.subject_threshold:
            state.history.append(_entry(ctx, algorithm, epoch, samples, heldout, [], measure, eval_seconds, 0.0, began,
                                        STOP_SUBJECT))
            rollback = state.previous if state.previous is not None else start_state
            ctx.policy.load(rollback)
            return finish(STOP_SUBJECT, rollback)
        train_began = time.perf_counter()
        signal, fallback_share = algorithm.signal(tracker, samples)
        stats, stopped = _train_epoch(ctx, algorithm, samples, signal, optimizer, state, store, callback, epoch)
        if stopped:
            ctx.policy.load(start_state)
            return finish(STOP_CALLBACK, start_state)
        train_seconds = time.perf_counter() - train_began
        state.history.append(_entry(ctx, algorithm, epoch, samples, heldout, stats, measure, eval_seconds, train_seconds,
                                    began))
        if fallback_share is not None:
            state.history[-1]["advantage_fallback_share"] = fallback_share
        state.previous, state.epoch = start_state, epoch + 1
        if store is not None:
            if processes.is_main:
                last = store.save(state.epoch, _checkpoint(ctx, optimizer, tracker, state, fingerprint))
                write_metrics(metrics_dir, state.history)
            processes.barrier()
            last = store.latest()
    final = None
    if config.heldout_every and ctx.prompts.heldout:
        final = summarize(evaluate_heldout(ctx))
    return finish(STOP_FINISHED, ctx.policy.trained_state(), final)


def _maybe_heldout(ctx: RunContext, epoch: int) -> tuple[list[float], float]:
    every = ctx.config.heldout_every
    if not every or not ctx.prompts.heldout or epoch % every:
        return [], 0.0
    began = time.perf_counter()
    rewards = evaluate_heldout(ctx)
    return rewards, time.perf_counter() - began


# --- one epoch of training -------------------------------------------------------------------


def _train_epoch(ctx, algorithm: Algorithm, samples: EpochSamples, signal: torch.Tensor, optimizer, state, store,
                 callback, epoch) -> tuple[list[StepStats], bool]:
    """Inner epochs of optimizer steps, each on `gradient_accumulation_steps` micro-batches;
    `signal` [N] holds every sample's advantage or weight. Returns the micro-batch statistics
    and whether to stop."""
    config = ctx.config
    signal = signal[samples.local_rows]
    identifier = torch.tensor([samples.drawn[i].group == IDENTIFIER for i in samples.local_rows.tolist()])
    accumulation, stats = config.gradient_accumulation_steps, []
    for inner in range(config.inner_epochs):
        micro = _minibatches(ctx, samples, epoch, inner)
        for update in range(len(micro) // accumulation):
            optimizer.zero_grad(set_to_none=True)
            done = accumulate(ctx, algorithm, samples, micro[update * accumulation:(update + 1) * accumulation],
                              signal, identifier, (epoch, inner, update))
            stats += done
            preview = tensor_to_pil(samples.preview) if samples.preview is not None and update == 0 and inner == 0 and callback is not None else None
            loss = sum(s.loss for s in done) / len(done)
            if _optimizer_step(ctx, optimizer, loss, state, store, callback, config.total_updates, preview):
                return stats, True
    return stats, False


def accumulate(ctx: RunContext, algorithm: Algorithm, samples: EpochSamples, micro_batches: list[torch.Tensor],
               signal: torch.Tensor, identifier: torch.Tensor, draw: tuple) -> list[StepStats]:
    """Back-propagates one optimizer step's micro-batches (local row indices), each loss
    scaled by 1 / their number: the accumulated gradient is the mean over all their samples
    (and trained timesteps), the same as one batch of all of them. `signal` holds DDPO
    advantages or RWR weights per local row; `draw` = (epoch, inner epoch, update)."""
    scale, offsets = 1.0 / len(micro_batches), [0]
    for rows in micro_batches:
        offsets.append(offsets[-1] + len(rows))
    parts = [(rows, signal[rows], identifier[rows], draw, scale, torch.arange(start, start + len(rows)))
             for rows, start in zip(micro_batches, offsets)]
    if ctx.config.parallel_batches == 1:
        return [algorithm.backward(ctx, samples, *part) for part in parts]
    stats = []
    for stat, recorder in in_order([partial(_recorded, ctx, algorithm, samples, part) for part in parts],
                                   ctx.config.parallel_batches):
        recorder.add_to()  # in the micro-batches' order, as one-by-one back-propagation adds them
        stats.append(stat)
    return stats


def _recorded(ctx: RunContext, algorithm: Algorithm, samples: EpochSamples, part: tuple
              ) -> tuple[StepStats, GradientRecorder]:
    """One micro-batch in a worker thread: its statistics and its recorded gradients."""
    recorder = GradientRecorder(ctx.precision, ctx.policy.params)
    return algorithm.backward(ctx, samples, *part, backward=recorder.backward), recorder


def _minibatches(ctx: RunContext, samples: EpochSamples, epoch: int, inner: int) -> list[torch.Tensor]:
    """This process's samples in a seeded shuffled order (the global order restricted to them), in chunks."""
    order = torch.randperm(len(samples.rewards), generator=generator_for(ctx.config.seed, epoch, inner, "shuffle"))
    local = {row: i for i, row in enumerate(samples.local_rows.tolist())}
    mine = torch.tensor([local[row] for row in order.tolist() if row in local])
    return list(mine.split(ctx.config.train_batch_size))


def _optimizer_step(ctx, optimizer, loss: float, state, store, callback, total, preview) -> bool:
    """Averages gradients over processes, guards against non-finite values, steps, calls back."""
    processes, params = ctx.processes, ctx.policy.params
    processes.average_gradients(params)
    mean_loss = float(processes.sum(torch.tensor([loss], dtype=torch.float64))[0]) / processes.world_size
    step = state.optimizer_steps + 1
    guarded_step(optimizer, params, ctx.precision, mean_loss, step, store, ctx.config.max_grad_norm)
    state.optimizer_steps = step
    stop = notify(callback, StepReport(step, total, mean_loss, preview))
    return bool(processes.sum(torch.tensor([float(stop)]))[0] > 0)


# --- metrics, checkpoints, metadata --------------------------------------------------------------


def _entry(ctx, algorithm, epoch, samples, heldout, stats, measure, eval_seconds, train_seconds, began, stopped=None
           ) -> dict:
    """The metrics of one epoch (step statistics averaged over steps and processes)."""
    reward = group_stats(samples.rewards, [d.group for d in samples.drawn])
    if heldout:
        reward[HELDOUT] = summarize(heldout)
    names = ("loss", "clip_fraction", "approx_kl", "kl_penalty", "weighted", "prior")
    local = torch.tensor([[getattr(s, n) for n in names] for s in stats], dtype=torch.float64)
    means = local.mean(0) if len(stats) else torch.full((len(names),), float("nan"), dtype=torch.float64)
    means = ctx.processes.sum(means) / ctx.processes.world_size
    entry = {"epoch": epoch + 1, "samples": len(samples.rewards), "reward": reward}
    wanted = algorithm.logged
    entry.update({n: float(v) for n, v in zip(names, means.tolist()) if n in wanted})
    entry["subject_measure"] = measure
    entry["time"] = {"sample": samples.sample_seconds, "reward": samples.reward_seconds, "train": train_seconds,
                     "eval": eval_seconds, "total": time.perf_counter() - began}
    if stopped:
        entry["stopped"] = stopped
    return entry


def _checkpoint(ctx: RunContext, optimizer, tracker, state: RunState, fingerprint: str) -> dict:
    return {
        "trainable": ctx.policy.trained_state(),
        "previous": state.previous or {},
        "tracker": json.dumps(tracker.state_dict()),
        "history": json.dumps(state.history),
        "optimizer_steps": state.optimizer_steps,
        "world_size": ctx.processes.world_size,
        "base_lora": fingerprint,
        **trainer_state(ctx.config, optimizer, ctx.precision),
    }


def _restore(ctx: RunContext, saved: dict, optimizer, tracker, state: RunState, fingerprint: str) -> None:
    differ = []
    if saved.get("world_size", 1) != ctx.processes.world_size:
        differ.append(f"number of processes ({saved.get('world_size')} then, {ctx.processes.world_size} now)")
    if saved.get("base_lora", "") != fingerprint:
        differ.append("the personalized LoRA")
    check_resumable(saved, ctx.config, "RL", differ)
    ctx.policy.load(saved["trainable"])
    restore_trainer_state(saved, optimizer, ctx.precision)
    tracker.load_state_dict(json.loads(saved["tracker"]))
    state.epoch, state.optimizer_steps = int(saved["step"]), int(saved["optimizer_steps"])
    state.history = json.loads(saved["history"])
    state.previous = dict(saved["previous"]) or None


def _metadata(ctx: RunContext, base_model_hash: str, state: RunState, reason: str) -> LoraMetadata:
    training = {"rl": ctx.config.to_dict(), "epochs_done": state.epoch, "stop_reason": reason}
    return LoraMetadata.naming(ctx.prompts.subject, base_model_hash=base_model_hash, method=ctx.config.method,
                               training_config=training)
