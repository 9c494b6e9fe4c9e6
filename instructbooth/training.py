"""Plumbing every trainer shares (personalize, RL, DPO): checkpoints, callbacks, precision.

Nothing here knows about diffusion. A trainer keeps its own loop and calls:

- `CheckpointStore(folder)`: numbered checkpoint files written atomically, the newest found
  again on resume, old ones pruned. A checkpoint is a plain dict of tensors, numbers and
  strings (`torch.load(weights_only=True)` reads it); `capture_rng` / `restore_rng` put
  `torch.Generator` states in it so that a resumed run draws the same numbers.
- `StepReport` + `notify(callback, report) -> bool`: the per-step callback protocol. The
  callback returns False (or raises `StopTraining`) to stop; anything else it raises
  propagates (ComfyUI's cancel does that).
- `require_finite(loss, step, store)`: the non-finite loss guard (names the last good checkpoint).
- `Precision`: 16-bit frozen weights with fp32 trainable parameters (autocast, and a loss
  scaler for fp16); `gradient_checkpointing(modules, enabled)` for diffusers and
  transformers models; `config_mismatch` to refuse resuming a different run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from .files import write_torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
GLOBAL_RNG = "torch_global"  # key of torch's global CPU generator in `capture_rng` output


# --- per-step callback ---------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    """What a trainer tells its callback after each optimizer step."""

    step: int  # optimizer steps completed so far (1-based after the first step)
    total: int  # optimizer steps the run will take
    loss: float  # total training loss of this step
    preview: Any = None  # a PIL image when the trainer made one this step, else None
    stage: str = "train"  # "class_images" while personalization generates them: step / total count images, loss NaN


StepCallback = Callable[[StepReport], "bool | None"]


class StopTraining(Exception):
    """Raised by a callback to stop the run cleanly (same as returning False)."""


def notify(callback: StepCallback | None, report: StepReport) -> bool:
    """Calls `callback(report)`; True when the run should stop."""
    if callback is None:
        return False
    try:
        return callback(report) is False
    except StopTraining:
        return True


# --- non-finite loss guard --------------------------------------------------------------


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


# --- RNG states ---------------------------------------------------------------------------


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """States of the named generators plus torch's global CPU generator."""
    states = {name: gen.get_state() for name, gen in generators.items()}
    states[GLOBAL_RNG] = torch.get_rng_state()
    return states


def restore_rng(generators: Mapping[str, torch.Generator], states: Mapping[str, torch.Tensor]) -> None:
    """Puts back what `capture_rng` saved; every named generator must have a state."""
    missing = sorted(set(generators) - set(states))
    if missing:
        raise ValueError(f"checkpoint has no RNG state for {missing}; it was written by a different trainer")
    for name, gen in generators.items():
        gen.set_state(states[name])
    if GLOBAL_RNG in states:
        torch.set_rng_state(states[GLOBAL_RNG])


# --- checkpoints --------------------------------------------------------------------------


class CheckpointStore:
    """`folder/checkpoint-<step>.pt` files: written atomically, newest kept, older pruned.

    A checkpoint is whatever dict the trainer passes (conventionally: "step", "trainable",
    "optimizer", "rng", "config", ...). Files are read with `weights_only=True`.
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Writes `state` as the checkpoint of `step`, then prunes to the newest `keep`."""
        path = write_torch(self.folder / f"checkpoint-{step:07d}.pt", {"step": step, **state})
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        """Deletes every checkpoint in the folder (starting a run over)."""
        for path in self.paths():
            path.unlink(missing_ok=True)

    def load(self, path: str | Path | None = None) -> dict[str, Any] | None:
        """The given checkpoint, or the newest one; None when the folder has none."""
        path = Path(path) if path is not None else self.latest()
        if path is None:
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"cannot read training checkpoint {path}: {error}; delete it to start over") from error


def state_fingerprint(state: Mapping[str, torch.Tensor] | None) -> str:
    """sha256 of a tensor dict's names and float32 values ("" for None or empty): tells
    whether a resumed run starts from the same LoRA / weights as the interrupted one."""
    if not state:
        return ""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any], may_differ: Iterable[str] = ()) -> list[str]:
    """Names of config fields that differ between a checkpoint and this run (sorted)."""
    allowed = set(may_differ)
    keys = (set(saved) | set(current)) - allowed
    return sorted(k for k in keys if saved.get(k) != current.get(k))


# --- mixed precision ----------------------------------------------------------------------

PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


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

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

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
