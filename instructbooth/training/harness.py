"""What every trainer (personalize, RL, DPO, demo pretraining) does around its own step body.

- `training_mode(modules, trained)`: gradients on (also inside ComfyUI's `inference_mode`),
  the trained modules in train mode and the rest in eval, every mode put back afterwards.
- `adamw(params, config)` and `learning_rate_at(step, config)`: the optimizer and its
  linear warm-up from the config's `learning_rate`, `weight_decay`, `adam_betas`, `adam_eps`
  and `warmup_steps` (the same field names in every stage's config).
- `guarded_step(...)`: the non-finite loss check, the backward pass, the (fp16-scaled, clipped)
  optimizer step, the non-finite gradient check and zeroing the gradients, in that order.
- `trainer_state` / `restore_trainer_state`: the checkpoint entries every trainer writes
  (optimizer, loss scaler, generators, config), and the refusal to resume a checkpoint made
  with other settings. A config marks its own resumable fields: `RUN_CONTROL` (settings that do
  not change the trained weights; the nodes leave them out of their run keys) and
  `RUN_LENGTH` (the steps or epochs field: a resumed run may be longer or shorter).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from .checkpoints import CheckpointStore, capture_rng, config_mismatch, restore_rng
from .guards import require_finite
from .precision import Precision


@contextlib.contextmanager
def training_mode(modules: Iterable[torch.nn.Module], trained: Sequence[torch.nn.Module] = ()) -> Iterator[None]:
    """Gradients enabled (even under `torch.inference_mode`), `trained` in train mode and every
    other module in eval (SD1.5 has no dropout: eval keeps sampling and re-scoring identical);
    the modes the modules had are restored on exit."""
    modules = list(modules)
    with torch.inference_mode(False), torch.enable_grad():
        modes = [(module, module.training) for module in modules]
        for module in modules:
            module.train(any(module is t for t in trained))
        try:
            yield
        finally:
            for module, training in modes:
                module.train(training)


def adamw(params: Iterable[torch.nn.Parameter], config: Any) -> torch.optim.AdamW:
    """AdamW from a stage config's `learning_rate`, `adam_betas`, `adam_eps` and `weight_decay`."""
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=tuple(config.adam_betas), eps=config.adam_eps,
                             weight_decay=config.weight_decay)


def learning_rate_at(step: int, config: Any) -> float:
    """Linear warm-up over the config's `warmup_steps` (0 or absent: none), then constant; step is 0-based."""
    warmup = getattr(config, "warmup_steps", 0)
    if warmup and step < warmup:
        return config.learning_rate * (step + 1) / warmup
    return config.learning_rate


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate


def guarded_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], precision: Precision,
                 loss: torch.Tensor | float, step: int, store: CheckpointStore | None,
                 max_grad_norm: float | None) -> float:
    """Optimizer step `step` (1-based). `loss` is the step's loss tensor (checked, then
    back-propagated here) or, after gradient accumulation, the mean of the micro-batch losses
    as a float (already back-propagated). Refuses a non-finite loss before any backward pass,
    unscales (fp16), clips and steps, refuses a non-finite gradient norm (fp16's scaler skips
    such steps itself), zeroes the gradients. Returns the loss as a float. A refusal raises
    NonFiniteLossError naming the last good checkpoint."""
    value = require_finite(loss, step, store)
    if isinstance(loss, torch.Tensor):
        precision.backward(loss)
    norm = precision.step(optimizer, params, max_grad_norm)
    if precision.scaler is None:
        require_finite(norm, step, store, what="gradient norm")
    optimizer.zero_grad(set_to_none=True)
    return value


# --- checkpoints of a run ------------------------------------------------------------------------


def resumable_changes(config: Any) -> tuple[str, ...]:
    """Fields a resumed run may change: the run length and the settings that do not change the weights."""
    return (config.RUN_LENGTH, *config.RUN_CONTROL)


def trainer_state(config: Any, optimizer: torch.optim.Optimizer, precision: Precision,
                  generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The checkpoint entries every trainer writes; the trainer adds its own (trained weights, history)."""
    return {"optimizer": optimizer.state_dict(), "scaler": precision.state_dict(),
            "rng": capture_rng(generators or {}), "config": json.dumps(config.to_dict())}


def check_resumable(saved: Mapping[str, Any], config: Any, what: str, other_changes: Iterable[str] = ()) -> None:
    """Refuses to resume `saved` when settings outside the config's resumable fields changed, or
    when `other_changes` (inputs the caller compared: "the personalized LoRA", ...) is not empty."""
    differ = config_mismatch(json.loads(saved["config"]), config.to_dict(), resumable_changes(config))
    differ += list(other_changes)
    if differ:
        raise ValueError(f"the {what} checkpoint at step {saved['step']} was made with different settings "
                         f"({', '.join(differ)}); use the same settings, another folder, or resume=False")


def restore_trainer_state(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, precision: Precision,
                          generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Puts back what `trainer_state` saved (call `check_resumable` first)."""
    optimizer.load_state_dict(saved["optimizer"])
    precision.load_state_dict(saved["scaler"])
    restore_rng(generators or {}, saved["rng"])
