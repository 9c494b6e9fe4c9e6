"""LoRA for SD1.5 components: inject trainable adapters, read them out, merge, apply.

Trainable LoRA wraps each target layer (UNet attention projections, optionally the CLIP
text encoder's) in a `LoraLinear`: the base layer stays frozen and the output gains
`(alpha / rank) * up(down(x))`, with `up` starting at zero so an injected model starts
out equal to its base. LoRA weights are float32 even when the base is fp16/bf16.

States are plain dicts in kohya's key names (see `keys`), the format ComfyUI's
stock LoraLoader reads; files are safetensors with metadata (see `files`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..components import SDComponents
from .files import LoraMetadata, load_lora, read_lora_metadata, save_lora
from .keys import ALPHA, DOWN, UP, LoraError, few_names, group_by_module, kohya_module_map, patchable_modules
from .keys import text_module_name, unet_module_name

__all__ = [
    "TEXT_ATTENTION_TARGETS", "TEXT_MLP_TARGETS", "UNET_ALL_TARGETS", "UNET_ATTENTION_TARGETS", "UNET_EXTRA_TARGETS",
    "UNET_RESNET_TARGETS",
    "LoraConfig", "LoraError", "LoraLinear", "LoraMetadata", "apply_lora", "find_unknown_modules", "inject_lora",
    "lora_merged",
    "load_lora", "load_lora_state", "lora_disabled", "lora_parameters", "lora_state_dict", "merge_lora_states",
    "read_lora_metadata", "remove_lora", "save_lora",
]

UNET_ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_EXTRA_TARGETS = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
# The rest of the UNet: ResNet convolutions and time projections, the in/out convolutions and
# the down/up-sampling convolutions ("conv").
UNET_RESNET_TARGETS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv")
UNET_ALL_TARGETS = UNET_ATTENTION_TARGETS + UNET_EXTRA_TARGETS + UNET_RESNET_TARGETS  # every Linear and Conv2d
TEXT_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_MLP_TARGETS = ("fc1", "fc2")
_SAVED_FLAGS = "_instructbooth_requires_grad"  # attribute holding requires_grad flags from before injection


@dataclass(frozen=True)
class LoraConfig:
    """Where LoRA goes and how big it is."""

    rank: int = 4  # r of each low-rank pair
    alpha: float = 4.0  # scale of the update = alpha / rank
    # Layer names inside UNet attention blocks (attn1/attn2), matched as path suffixes;
    # UNET_EXTRA_TARGETS adds the 1x1 projections and feed-forward layers.
    unet_targets: tuple[str, ...] = UNET_ATTENTION_TARGETS
    # Text-encoder layer names, e.g. TEXT_ATTENTION_TARGETS (+ TEXT_MLP_TARGETS); empty = text encoder frozen.
    text_targets: tuple[str, ...] = ()
    dropout: float = 0.0  # dropout on the LoRA branch's input during training

    def __post_init__(self):
        for name in ("unet_targets", "text_targets"):  # accept a list (from JSON) or one name
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.rank < 1:
            raise LoraError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def of(cls, rank: int, alpha: float | None = None, **where) -> "LoraConfig":
        """A stage config's LoRA: `alpha` None means alpha = rank (scale 1), the convention of every stage."""
        return cls(rank=rank, alpha=float(rank) if alpha is None else alpha, **where)


class LoraLinear(nn.Module):
    """A frozen nn.Linear or nn.Conv2d plus a trainable low-rank update.

    forward(x) = base(x) + (alpha / rank) * up(down(dropout(x))). For a convolution,
    `down` has the base's kernel, stride and padding and `up` is 1x1 (kohya's layout).
    The LoRA weights stay float32; inputs are cast to them and the update back to the
    base's output dtype. `enabled = False` makes it return exactly `base(x)`.
    """

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.enabled = True
        self.down, self.up = _lora_pair(base, self.rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        update = self.up(self.down(self.dropout(x.to(self.down.weight.dtype))))
        return out + (self.scale * update).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, enabled={self.enabled}"


def _lora_pair(base: nn.Module, rank: int) -> tuple[nn.Module, nn.Module]:
    """(down, up) layers in float32 on the base's device; `up` starts at zero."""
    factory = {"device": base.weight.device, "dtype": torch.float32}
    if isinstance(base, nn.Linear):
        down = nn.Linear(base.in_features, rank, bias=False, **factory)
        up = nn.Linear(rank, base.out_features, bias=False, **factory)
    elif isinstance(base, nn.Conv2d) and base.groups == 1:
        conv = {"kernel_size": base.kernel_size, "stride": base.stride, "padding": base.padding, "dilation": base.dilation}
        down = nn.Conv2d(base.in_channels, rank, bias=False, padding_mode=base.padding_mode, **conv, **factory)
        up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **factory)
    else:
        raise LoraError(f"LoRA wraps nn.Linear or an ungrouped nn.Conv2d, not {base!r}")
    nn.init.zeros_(up.weight)
    return down, up


# ---------------------------------------------------------------------------- inject / remove


def inject_lora(components: SDComponents, config: LoraConfig, seed: int | None = None) -> list[nn.Parameter]:
    """Wraps every target layer in a LoraLinear and freezes everything else.

    `down` weights are drawn uniformly in +-1/sqrt(fan_in) (from `seed` when given),
    `up` weights are zero. Returns the trainable parameters in a fixed order (UNet
    then text encoder, module order, down before up)."""
    if _lora_modules(components):
        raise LoraError("LoRA is already injected into these components; call remove_lora first")
    plan = _injection_plan(components, config)
    _save_requires_grad(components)
    components.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    wrappers = [LoraLinear(base, config.rank, config.alpha, config.dropout) for _, _, base in plan]
    for (root, path, _), wrapped in zip(plan, wrappers):
        _init_down(wrapped.down.weight, generator)
        _set_submodule(root, path, wrapped)
    return lora_parameters(components)


def _injection_plan(components: SDComponents, config: LoraConfig) -> list[tuple[nn.Module, str, nn.Module]]:
    """(root, path, layer) of every layer to wrap, in module order. Raises before anything
    changes when a target matches nothing or a matched layer cannot be wrapped."""
    plan = []
    for part, root, targets in (("unet", components.unet, config.unet_targets),
                                ("text_encoder", components.text_encoder, config.text_targets)):
        layers = list(patchable_modules(root))
        if part == "text_encoder":
            layers = [(p, m) for p, m in layers if text_module_name(p) is not None]
        _require_matches(part, [p for p, _ in layers], targets)
        plan += [(root, p, m) for p, m in layers if any(_matches(p, t) for t in targets)]
    grouped = [f"{path} (groups={layer.groups})" for _, path, layer in plan if getattr(layer, "groups", 1) != 1]
    if grouped:
        raise LoraError(f"LoRA cannot wrap grouped convolutions: {few_names(grouped)}")
    return plan


def _require_matches(part: str, paths: list[str], targets: tuple[str, ...]) -> None:
    for target in targets:
        if not any(_matches(path, target) for path in paths):
            names = sorted({path.rsplit(".", 1)[-1] for path in paths})
            raise LoraError(f"LoRA target {target!r} matches no Linear/Conv2d layer in the {part}; "
                            f"layer names look like {few_names(names, 8)}")


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def _init_down(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    bound = 1.0 / math.sqrt(weight[0].numel())
    values = torch.rand(weight.shape, generator=generator, dtype=torch.float32) * 2 - 1
    with torch.no_grad():
        weight.copy_(values * bound)


def remove_lora(components: SDComponents) -> None:
    """Puts every wrapped base layer back and restores the requires_grad flags of before."""
    for root in components.modules():
        for path, module in list(root.named_modules()):
            if isinstance(module, LoraLinear):
                _set_submodule(root, path, module.base)
        saved = root.__dict__.pop(_SAVED_FLAGS, None)
        if saved is not None:
            for name, param in root.named_parameters():
                param.requires_grad_(saved.get(name, param.requires_grad))


def _save_requires_grad(components: SDComponents) -> None:
    for root in components.modules():
        root.__dict__[_SAVED_FLAGS] = {n: p.requires_grad for n, p in root.named_parameters()}


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


# ---------------------------------------------------------------------------- read / write injected


def _lora_modules(components: SDComponents) -> dict[str, LoraLinear]:
    """Kohya name -> injected LoraLinear, UNet first, in module order."""
    found: dict[str, LoraLinear] = {}
    for path, module in components.unet.named_modules():
        if isinstance(module, LoraLinear):
            found[unet_module_name(path)] = module
    for path, module in components.text_encoder.named_modules():
        if isinstance(module, LoraLinear):
            found[text_module_name(path)] = module
    return found


def _require_lora(components: SDComponents) -> dict[str, LoraLinear]:
    modules = _lora_modules(components)
    if not modules:
        raise LoraError("no LoRA is injected into these components; call inject_lora first")
    return modules


def lora_parameters(components: SDComponents) -> list[nn.Parameter]:
    """The injected LoRA's parameters: UNet then text encoder, down before up."""
    return [p for m in _require_lora(components).values() for p in (m.down.weight, m.up.weight)]


def lora_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """The injected LoRA as kohya keys: float32 CPU copies plus a scalar `.alpha` each."""
    state = {}
    for name, module in _require_lora(components).items():
        state[f"{name}.{DOWN}"] = module.down.weight.detach().to("cpu", torch.float32).clone()
        state[f"{name}.{UP}"] = module.up.weight.detach().to("cpu", torch.float32).clone()
        state[f"{name}.{ALPHA}"] = torch.tensor(module.alpha, dtype=torch.float32)
    return state


def load_lora_state(components: SDComponents, state: Mapping[str, torch.Tensor]) -> None:
    """Copies a kohya state into the injected LoRA (resume). Strict: the same modules,
    shapes and alphas, or LoraError."""
    modules = _require_lora(components)
    groups = group_by_module(state)
    missing, unexpected = sorted(modules.keys() - groups.keys()), sorted(groups.keys() - modules.keys())
    if missing or unexpected:
        raise LoraError(f"the LoRA state does not fit the injected LoRA: missing {len(missing)} modules "
                        f"({few_names(missing)}), unexpected {len(unexpected)} ({few_names(unexpected)})")
    for name, module in modules.items():
        _load_module(name, module, groups[name])


def _load_module(name: str, module: LoraLinear, tensors: dict[str, torch.Tensor]) -> None:
    for suffix, param in ((DOWN, module.down.weight), (UP, module.up.weight)):
        if tensors[suffix].shape != param.shape:
            raise LoraError(f"{name}.{suffix} has shape {list(tensors[suffix].shape)}, "
                            f"the injected LoRA expects {list(param.shape)}")
    alpha = float(tensors[ALPHA]) if ALPHA in tensors else float(module.rank)
    if not math.isclose(alpha, module.alpha, rel_tol=1e-6):
        raise LoraError(f"{name} has alpha {alpha}, the injected LoRA has alpha {module.alpha}")
    with torch.no_grad():
        module.down.weight.copy_(tensors[DOWN])
        module.up.weight.copy_(tensors[UP])


@contextlib.contextmanager
def lora_disabled(components: SDComponents) -> Iterator[None]:
    """Within the block the injected LoRA is off: outputs are exactly the base model's."""
    modules = list(_lora_modules(components).values())
    before = [m.enabled for m in modules]
    for module in modules:
        module.enabled = False
    try:
        yield
    finally:
        for module, flag in zip(modules, before):
            module.enabled = flag


# ---------------------------------------------------------------------------- apply / merge


def find_unknown_modules(components: SDComponents, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Module names of `state` that match no layer of these components (sorted)."""
    known = kohya_module_map(components.unet, components.text_encoder, LoraLinear)
    return sorted(group_by_module(state).keys() - known.keys())


def apply_lora(
    components: SDComponents, state: Mapping[str, torch.Tensor], unet_scale: float = 1.0, text_scale: float = 1.0
) -> int:
    """Merges a kohya SD1.5 LoRA (ours or third-party) into the base weights.

    weight += scale * (alpha / rank) * up @ down for every module (into the base layer
    of an injected LoraLinear, if any). Returns the number of patched modules. Raises
    LoraError for unknown modules or shapes that do not fit, before changing anything.
    To merge for a while and undo exactly, use `lora_merged`."""
    deltas = _lora_deltas(components, state, unet_scale, text_scale)
    with torch.no_grad():
        for layer, delta in deltas:
            layer.weight.add_(delta.to(layer.weight.device, layer.weight.dtype))
    return len(deltas)


@contextlib.contextmanager
def lora_merged(components: SDComponents, state: Mapping[str, torch.Tensor] | None, scale: float = 1.0
                ) -> Iterator[None]:
    """Within the block `state` is merged into the weights (times `scale`); afterwards the layers
    it patched hold their old weights again, bit for bit. The one way every stage stacks a LoRA
    on the model for a while: RL and DPO train on top of the personalized LoRA, preference pairs
    and evaluations sample with it. Blocks nest (undone in reverse order); LoRA injected inside
    the block may stay injected, it wraps the same layers."""
    if not state:
        yield
        return
    deltas = _lora_deltas(components, state, scale, scale)
    saved = [(layer, layer.weight.detach().clone()) for layer, _ in deltas]
    with torch.no_grad():
        for layer, delta in deltas:
            layer.weight.add_(delta.to(layer.weight.device, layer.weight.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in saved:
                layer.weight.copy_(weight)


def _lora_deltas(components: SDComponents, state: Mapping[str, torch.Tensor], unet_scale: float,
                 text_scale: float) -> list[tuple[nn.Module, torch.Tensor]]:
    """(layer, its weight change) for every module of `state`; LoraError before any change."""
    known = kohya_module_map(components.unet, components.text_encoder, LoraLinear)
    groups = group_by_module(state)
    unknown = sorted(groups.keys() - known.keys())
    if unknown:
        raise LoraError(f"{len(unknown)} LoRA modules match no layer of this SD1.5 model: {few_names(unknown)}")
    layers = _named_layers(components)
    deltas = []
    for name, tensors in groups.items():
        part, path = known[name]
        layer = layers[part][path]
        scale = unet_scale if part == "unet" else text_scale
        deltas.append((layer, scale * module_delta(name, tensors, tuple(layer.weight.shape))))
    return deltas


def _named_layers(components: SDComponents) -> dict[str, dict[str, nn.Module]]:
    return {"unet": dict(patchable_modules(components.unet, LoraLinear)),
            "text_encoder": dict(patchable_modules(components.text_encoder, LoraLinear))}


def module_delta(name: str, tensors: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...]) -> torch.Tensor:
    """(alpha / rank) * up @ down of one module, in float32, shaped like the weight."""
    down, up = tensors[DOWN].float(), tensors[UP].float()
    rank = down.shape[0]
    alpha = float(tensors[ALPHA]) if ALPHA in tensors else float(rank)
    up2d = up.reshape(up.shape[0], -1)
    out_features, in_numel = weight_shape[0], math.prod(weight_shape[1:])
    if up2d.shape != (out_features, rank) or down[0].numel() != in_numel:
        raise LoraError(f"shape mismatch for {name}: lora_down {list(down.shape)} and lora_up {list(up.shape)} "
                        f"do not fit the layer weight {list(weight_shape)}")
    return ((alpha / rank) * (up2d @ down.reshape(rank, -1))).reshape(weight_shape)


def merge_lora_states(
    first: Mapping[str, torch.Tensor],
    second: Mapping[str, torch.Tensor],
    first_scale: float = 1.0,
    second_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One LoRA equal to `first` and `second` applied together, exactly.

    Per module the ranks are concatenated: down = [down1; down2], up = [s1*up1, s2*up2]
    with s = scale * alpha / rank folded into up, and alpha = total rank (scale 1)."""
    groups = [(group_by_module(first), first_scale), (group_by_module(second), second_scale)]
    names = list(dict.fromkeys([*groups[0][0], *groups[1][0]]))
    merged = {}
    for name in names:
        pairs = [_scaled_pair(g[name], scale) for g, scale in groups if name in g]
        down, up = _concatenate(name, pairs)
        merged[f"{name}.{DOWN}"], merged[f"{name}.{UP}"] = down, up
        merged[f"{name}.{ALPHA}"] = torch.tensor(float(down.shape[0]), dtype=torch.float32)
    return merged


def _scaled_pair(tensors: Mapping[str, torch.Tensor], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    down, up = tensors[DOWN].float(), tensors[UP].float()
    rank = down.shape[0]
    alpha = float(tensors[ALPHA]) if ALPHA in tensors else float(rank)
    return down, up * (scale * alpha / rank)


def _concatenate(name: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks (down, up) pairs along the rank; 2-D and 1x1 4-D layouts may mix."""
    four_d = any(down.ndim == 4 for down, _ in pairs)
    downs, ups = [], []
    for down, up in pairs:
        if four_d and down.ndim == 2:
            down, up = down[:, :, None, None], up[:, :, None, None]
        if four_d and up.ndim == 2:
            up = up[:, :, None, None]
        downs.append(down)
        ups.append(up)
    if len({d.shape[1:] for d in downs}) > 1 or len({u.shape[0] for u in ups}) > 1:
        raise LoraError(f"cannot merge {name}: lora_down shapes {[list(d.shape) for d in downs]}, "
                        f"lora_up shapes {[list(u.shape) for u in ups]} differ beyond the rank")
    return torch.cat(downs, 0).contiguous(), torch.cat(ups, 1).contiguous()
