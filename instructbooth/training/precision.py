"""Mixed precision (16-bit frozen weights, fp32 trainable parameters) and gradient checkpointing."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch


PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_problem(name: str) -> str:
    """A sentence when `name` is not a mixed-precision mode, else "" (configs check it before any work)."""
    return "" if name in PRECISIONS else f"mixed precision must be one of {sorted(PRECISIONS)}, got {name!r}"


@dataclass
class Precision:
    """Frozen weights in 16 bits, trainable parameters in fp32, math under autocast.

    `Precision.create("no" | "fp16" | "bf16", device)`; use `with precision.autocast():` around
    forward passes, `precision.backward(loss)` and `precision.step(optimizer, params, max_norm)`.
    fp16 uses a gradient scaler (its state goes into checkpoints); bf16 and "no" do not.
    """

    name: str
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, name: str, device: torch.device | str) -> "Precision":
        if name not in PRECISIONS:
            raise ValueError(f"mixed precision must be one of {sorted(PRECISIONS)}, got {name!r}")
        device_type = torch.device(device).type
        scaler = torch.amp.GradScaler(device_type) if name == "fp16" else None
        return cls(name, device_type, PRECISIONS[name], scaler)

    def cast_frozen(self, modules: Iterable[torch.nn.Module], trainable: Iterable[torch.nn.Parameter]) -> None:
        """Casts every floating parameter and buffer except `trainable` to the 16-bit dtype, in place."""
        if self.dtype is None:
            return
        keep = {id(p) for p in trainable}
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                if id(tensor) not in keep and tensor.is_floating_point():
                    tensor.data = tensor.data.to(self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss as back-propagated: times the fp16 gradient scale, else as it is."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scaled(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_norm: float | None) -> float:
        """Unscales (fp16), clips to `max_norm` (None: no clipping) and steps the optimizer.

        Returns the gradient norm before clipping. A non-finite norm skips the step: with
        fp16 that is the scaler's normal overflow handling; otherwise the caller should stop.
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf))
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        elif math.isfinite(norm):
            optimizer.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class GradientRecorder:
    """Stands in for `Precision.backward` where micro-batches run in threads: each call keeps its
    gradients (torch.autograd.grad) instead of adding them to `.grad`, and `add_to` adds them
    later in call order: the sums `.grad` would have got, bit for bit, with no two threads
    writing it at once."""

    def __init__(self, precision: Precision, params: list[torch.nn.Parameter]):
        self.precision, self.params, self.parts = precision, params, []

    def backward(self, loss: torch.Tensor) -> None:
        self.parts.append(torch.autograd.grad(self.precision.scaled(loss), self.params, allow_unused=True))

    def add_to(self) -> None:
        """Adds the recorded gradients to the parameters' `.grad`, in the order they were recorded."""
        with torch.no_grad():
            for part in self.parts:
                for param, grad in zip(self.params, part):
                    if grad is None:
                        continue
                    if param.grad is None:
                        param.grad = grad
                    else:
                        param.grad += grad
        self.parts = []


@contextlib.contextmanager
def gradient_checkpointing(modules: Iterable[torch.nn.Module], enabled: bool) -> Iterator[None]:
    """Turns gradient checkpointing on for diffusers / transformers models, off again after."""
    switched = [m for m in modules if enabled and not _checkpointing_on(m)]
    for module in switched:
        _first_method(module, "enable_gradient_checkpointing", "activation_checkpointing_enable",
                      "gradient_checkpointing_enable")()
    try:
        yield
    finally:
        for module in switched:
            _first_method(module, "disable_gradient_checkpointing", "activation_checkpointing_disable",
                          "gradient_checkpointing_disable")()


def _checkpointing_on(module: torch.nn.Module) -> bool:
    if hasattr(type(module), "is_activation_checkpointing"):  # transformers >= 5
        return bool(module.is_activation_checkpointing)
    return bool(getattr(module, "is_gradient_checkpointing", False))


def _first_method(module: torch.nn.Module, *names: str) -> Callable[[], None]:
    for name in names:
        if callable(getattr(type(module), name, None)):
            return getattr(module, name)
    raise TypeError(f"{type(module).__name__} supports none of {names}; cannot use gradient checkpointing")
