"""The model RL trains: the personalized model plus a LoRA, and the one-file result.

Default ("new LoRA on top"): the personalized LoRA is merged into the base weights, a
fresh LoRA is injected into the UNet and trained, and the result is the two merged by
rank concatenation: ONE file that ComfyUI's stock LoraLoader applies alone to the base
checkpoint. With the new LoRA switched off (`lora_disabled`) the model is exactly the
personalized one: the frozen reference of the KL guard.

`continue_base_lora`: the personalized LoRA itself is injected and trained further
(its UNet part; a text-encoder part stays frozen); the result has its rank.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

from ..components import SDComponents
from ..lora import (
    TEXT_ATTENTION_TARGETS,
    TEXT_MLP_TARGETS,
    UNET_ALL_TARGETS,
    LoraConfig,
    LoraError,
    inject_lora,
    load_lora_state,
    lora_disabled,
    lora_merged,
    lora_parameters,
    lora_state_dict,
    merge_lora_states,
    remove_lora,
)
from ..lora.keys import ALPHA, DOWN, group_by_module
from .config import RLConfig

State = dict[str, torch.Tensor]


@dataclass
class Policy:
    """Components with the trainable LoRA injected; `release()` undoes everything."""

    components: SDComponents
    params: list[torch.nn.Parameter]  # trained, in a fixed order (UNet LoRA, down before up)
    base_lora: State | None  # the personalized LoRA
    merged_base: bool  # base_lora was merged into the weights (and is unmerged on release)
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _released: bool = field(default=False, repr=False)

    @classmethod
    def prepare(cls, components: SDComponents, config: RLConfig, base_lora: Mapping[str, torch.Tensor] | None
                ) -> "Policy":
        base = {k: v.detach().to("cpu", torch.float32) for k, v in base_lora.items()} if base_lora else None
        if config.continue_base_lora:
            if base is None:
                raise ValueError("continue_base_lora needs the personalized LoRA (base_lora)")
            inject_lora(components, lora_config_of(base), seed=config.seed)
            load_lora_state(components, base)
            return cls(components, unet_lora_parameters(components), base, merged_base=False)
        undo = contextlib.ExitStack()
        undo.enter_context(lora_merged(components, base))
        try:
            inject_lora(components, config.lora_config(), seed=config.seed)
        except Exception:
            undo.close()
            raise
        return cls(components, unet_lora_parameters(components), base, base is not None, undo)

    def trained_state(self) -> State:
        """The injected LoRA as a kohya state (float32 CPU copies)."""
        return lora_state_dict(self.components)

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        load_lora_state(self.components, state)

    def one_file_state(self, trained: State) -> State:
        """The LoRA that reproduces the tuned model when applied alone to the base model."""
        if self.merged_base:
            return merge_lora_states(self.base_lora, trained)
        return dict(trained)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within the block the model is the personalized one (the new LoRA off)."""
        if not self.merged_base and self.base_lora is not None:
            raise ValueError("no frozen reference when continuing the personalized LoRA")
        with lora_disabled(self.components):
            yield

    def release(self) -> None:
        """Removes the LoRA and gives the layers the personalized one patched their old weights
        (`lora.lora_merged`); a second call does nothing."""
        if not self._released:
            self._released = True
            remove_lora(self.components)
            self._undo.close()


def unet_lora_parameters(components: SDComponents) -> list[torch.nn.Parameter]:
    """The injected LoRA's UNet parameters, trainable; a text-encoder part is frozen
    (so cached prompt embeddings stay valid)."""
    unet_ids = {id(p) for p in components.unet.parameters()}
    params = []
    for param in lora_parameters(components):
        trainable = id(param) in unet_ids
        param.requires_grad_(trainable)
        if trainable:
            params.append(param)
    if not params:
        raise LoraError("the LoRA has no UNet part to train")
    return params


def lora_config_of(state: Mapping[str, torch.Tensor]) -> LoraConfig:
    """The LoraConfig that `inject_lora` needs to hold `state` exactly (continue training)."""
    groups = group_by_module(state)
    ranks = {int(g[DOWN].shape[0]) for g in groups.values()}
    alphas = {round(float(g[ALPHA]), 6) if ALPHA in g else None for g in groups.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise LoraError(f"continuing a LoRA needs one rank and alpha for all modules; found ranks {sorted(ranks)}")
    rank, alpha = ranks.pop(), alphas.pop()
    suffixes = {"unet": UNET_ALL_TARGETS,
                "text_encoder": TEXT_ATTENTION_TARGETS + TEXT_MLP_TARGETS}
    targets: dict[str, set[str]] = {"unet": set(), "text_encoder": set()}
    for name in groups:
        part, suffix = _target_of(name, suffixes)
        targets[part].add(suffix)
    order = lambda part: tuple(t for t in suffixes[part] if t in targets[part])  # noqa: E731
    return LoraConfig(rank=rank, alpha=alpha if alpha is not None else float(rank),
                      unet_targets=order("unet"), text_targets=order("text_encoder"))


def _target_of(name: str, suffixes: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    part = "unet" if name.startswith("lora_unet_") else "text_encoder"
    for suffix in suffixes[part]:
        if name.endswith("_" + suffix.replace(".", "_")):
            return part, suffix
    raise LoraError(f"cannot continue training {name}: not a layer kind this trainer injects LoRA into")
