"""Pretraining the demo model on the world's held-in captions, resumable from checkpoints.

A flat loop: draw a fresh batch of world images, drop 10% of captions (for
classifier-free guidance), noise them at uniform timesteps, regress the noise with
Min-SNR-5 weights (Hang et al. 2023: faster convergence), AdamW with warmup and a
cosine decay, and an EMA of the weights that is what gets evaluated and shipped.
A checkpoint (weights, EMA, optimizer, data and noise RNG states) is written atomically
every `checkpoint_every` steps; calling `pretrain` again on the same folder continues.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from ..components import SDComponents
from ..encoding import encode_images, encode_prompts
from ..files import write_torch
from ..training import Precision, adamw, check_resumable, draw_noise, guarded_step, noised, per_sample_mse
from ..training import restore_trainer_state, set_learning_rate, trainer_state, training_mode
from .toys import sample_toy_batch
from .world import sample_batch

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class PretrainConfig:
    """Hyperparameters of demo pretraining (steps count optimizer updates)."""

    RUN_LENGTH: ClassVar[str] = "steps"  # a resumed run may be longer or shorter
    RUN_CONTROL: ClassVar[tuple[str, ...]] = ("checkpoint_every", "log_every")  # do not change the weights

    steps: int = 1600  # optimizer steps in all
    batch_size: int = 64  # images per step
    learning_rate: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 200  # linear warmup from 0 to `learning_rate`
    final_lr_fraction: float = 0.05  # cosine decay ends at learning_rate * this
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW's denominator epsilon
    max_grad_norm: float = 1.0  # max global gradient norm
    cfg_dropout: float = 0.1  # probability that a caption is replaced by ""
    min_snr_gamma: float = 0.0  # > 0: Min-SNR weights (they starve the highest noise levels, where the
    # prompt must decide the background, so off by default)
    ema_decay: float = 0.995  # EMA decay (warmed up as (1 + n) / (10 + n))
    split: str = "train"  # world split whose captions are trained on
    toy_share: float = 0.0  # share of each batch showing a generic toy (toys.py: the class prior of "toy")
    seed: int = 0  # data, noise and init seed
    checkpoint_every: int = 250  # steps between checkpoints (and at the end)
    log_every: int = 50  # steps between log lines

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class PretrainResult:
    step: int  # optimizer steps done (all sessions)
    seconds: float  # training wall time (all sessions)
    losses: list[float]  # mean loss of each log interval (this session)


def trainable_modules(components: SDComponents) -> list[torch.nn.Module]:
    return [components.unet, components.text_encoder]


def learning_rate(config: PretrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.final_lr_fraction + (1 - config.final_lr_fraction) * cosine)


def diffusion_loss(components: SDComponents, images: torch.Tensor, captions: list[str], gamma: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted MSE of the scheduler's prediction target (epsilon or v) for a
    batch of images [B, 3, H, W] in [0, 1]."""
    scheduler = components.scheduler
    latents = encode_images(components, images)
    noise, t = draw_noise(scheduler, latents, generator)
    noisy, target = noised(scheduler, latents, noise, t)
    prediction = components.unet(noisy, t, encode_prompts(components, captions)).sample
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    per_image = per_sample_mse(prediction, target)
    if gamma > 0:
        alpha_bar = scheduler.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        per_image = per_image * snr.clamp(max=gamma) / (snr + 1 if v_prediction else snr)
    return per_image.mean()


class Ema:
    """Exponential moving average of a list of modules' parameters."""

    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for param, shadow in zip(self.params, self.shadow):
            param.copy_(shadow)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for mine, saved in zip(self.shadow, state["shadow"]):
            mine.copy_(saved)
        self.updates = int(state["updates"])


def pretrain(
    config: PretrainConfig,
    components: SDComponents,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    stop_after_seconds: float | None = None,
) -> tuple[PretrainResult, Ema]:
    """Trains `components` (UNet and text encoder, in place) for `config.steps` steps.

    With `checkpoint_dir`, resumes from its checkpoint if there is one and writes new
    ones. `stop_after_seconds` ends this session early (after a checkpoint). Returns the
    result and the EMA (call `ema.copy_to_model()` to evaluate or ship EMA weights).
    """
    modules = trainable_modules(components)
    with training_mode(components.modules(), trained=modules):
        result, ema = _pretrain(config, components, modules, checkpoint_dir, log, stop_after_seconds)
    for module in modules:
        module.eval()
    return result, ema


def _pretrain(config, components, modules, checkpoint_dir, log, stop_after_seconds) -> tuple[PretrainResult, Ema]:
    for module in modules:
        module.requires_grad_(True)
    params = [p for m in modules for p in m.parameters()]
    optimizer, precision = adamw(params, config), Precision.create("no", "cpu")
    ema = Ema(modules, config.ema_decay)
    rng, generator = np.random.default_rng(config.seed), torch.Generator().manual_seed(config.seed)
    state = {"step": 0, "seconds": 0.0}
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if path is not None and path.is_file():
        state = _restore(path, config, modules, optimizer, precision, ema, rng, generator)
        log(f"resumed from {path} at step {state['step']}")
    losses, window, started = [], [], time.perf_counter()
    session_start, step = state["seconds"], state["step"]
    while step < config.steps:
        loss = _train_step(config, components, params, optimizer, precision, step, rng, generator)
        ema.update()
        window.append(loss)
        step += 1
        elapsed = session_start + time.perf_counter() - started
        if step % config.log_every == 0 or step == config.steps:
            losses.append(float(np.mean(window)))
            log(f"step {step}/{config.steps} loss {losses[-1]:.4f} lr {learning_rate(config, step - 1):.2e} "
                f"{elapsed / 60:.1f} min")
            window = []
        out_of_time = stop_after_seconds is not None and time.perf_counter() - started >= stop_after_seconds
        if path is not None and (step % config.checkpoint_every == 0 or step == config.steps or out_of_time):
            _save(path, config, modules, optimizer, precision, ema, rng, generator, step, elapsed)
        if out_of_time:
            break
    for module in modules:
        module.requires_grad_(False)
    total = session_start + time.perf_counter() - started
    return PretrainResult(step=step, seconds=total, losses=losses), ema


def training_batch(config: PretrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """World images, and round(toy_share x batch) of them with a generic toy instead."""
    toys = round(config.toy_share * config.batch_size)
    images, captions = sample_batch(config.batch_size - toys, rng, config.split)
    if not toys:
        return images, captions
    toy_images, toy_captions = sample_toy_batch(toys, rng, config.split)
    return np.concatenate([images, toy_images]), captions + toy_captions


def _train_step(config, components, params, optimizer, precision, step, rng, generator) -> float:
    images, captions = training_batch(config, rng)
    drop = rng.random(len(captions)) < config.cfg_dropout
    captions = ["" if d else c for c, d in zip(captions, drop)]
    set_learning_rate(optimizer, learning_rate(config, step))
    loss = diffusion_loss(components, torch.from_numpy(images), captions, config.min_snr_gamma, generator)
    return guarded_step(optimizer, params, precision, loss, step + 1, None, config.max_grad_norm)


def _save(path, config, modules, optimizer, precision, ema, rng, generator, step, seconds) -> None:
    write_torch(path, {
        "step": step,
        "seconds": seconds,
        "modules": [m.state_dict() for m in modules],
        "ema": ema.state_dict(),
        "data_rng": rng.bit_generator.state,
        **trainer_state(config, optimizer, precision, {"noise": generator}),
    })


def load_plain_checkpoint(path) -> dict:
    """A pretraining checkpoint read with `weights_only=True` (tensors, numbers, strings and
    containers only): a file that holds other Python objects is refused, and no code in it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds Python objects besides tensors and numbers, so it is not a demo "
                         f"pretraining checkpoint; it was not loaded (nothing in it ran): {str(error)[:200]}") from None


def _restore(path, config, modules, optimizer, precision, ema, rng, generator) -> dict:
    saved = load_plain_checkpoint(path)
    if not isinstance(saved.get("config"), str):
        raise ValueError(f"checkpoint {path} was written by an older version of the demo pretraining; delete it "
                         "to start over")
    check_resumable(saved, config, f"demo pretraining ({path})")
    for module, module_state in zip(modules, saved["modules"]):
        module.load_state_dict(module_state, strict=True)
    restore_trainer_state(saved, optimizer, precision, {"noise": generator})
    ema.load_state_dict(saved["ema"])
    rng.bit_generator.state = saved["data_rng"]
    return {"step": saved["step"], "seconds": saved["seconds"]}
