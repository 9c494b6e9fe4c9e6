"""Non-finite guards: NaN or inf in losses, gradients, weights and settings, named before they spread."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

if TYPE_CHECKING:
    from .checkpoints import CheckpointStore


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient) became NaN or infinite; the run stopped without saving the bad state."""

    def __init__(self, step: int, value: float, last_checkpoint: Path | None, what: str = "loss"):
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        kept = (
            f"the last good checkpoint is {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint was written (pass a checkpoint folder to keep progress)"
        )
        super().__init__(
            f"training {what} became {value} at step {step}; stopped, {kept}. The model's weights, the "
            "settings and the rewards were finite, so training itself diverged: lower the learning rate, or "
            "train in full precision / bf16 instead of fp16."
        )


def non_finite_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def require_finite_weights(modules: Iterable[torch.nn.Module], what: str = "the model") -> None:
    """Raises ValueError naming the first NaN/inf weight of `modules` (a damaged checkpoint or
    LoRA would otherwise train, or sample, NaN without saying why)."""
    for module in modules:
        broken = non_finite_keys(dict([*module.named_parameters(), *module.named_buffers()]))
        if broken:
            raise ValueError(f"{what} holds NaN or inf weights ({broken[0]}): the file it came from is damaged or "
                             "was saved from a diverged run; load a good copy")


def non_finite_settings(config: Any) -> list[str]:
    """"name=value" of every float setting of a dataclass config (tuples of floats included)
    that is NaN or infinite: such a value passes `> 0` checks and trains a NaN model."""
    found = []
    for name in getattr(config, "__dataclass_fields__", {}):
        value = getattr(config, name)
        numbers = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            found.append(f"{name}={value}")
    return found


def non_finite_problem(config: Any) -> str:
    """A sentence naming the non-finite settings, or "" when every number is finite."""
    found = non_finite_settings(config)
    return f"settings must be finite numbers: {', '.join(found)}" if found else ""


def require_finite(value: torch.Tensor | float, step: int, store: "CheckpointStore | None", what: str = "loss") -> float:
    """`value` as a float; raises NonFiniteLossError (naming the last checkpoint) if not finite."""
    number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(number):
        raise NonFiniteLossError(step, number, store.latest() if store is not None else None, what)
    return number
