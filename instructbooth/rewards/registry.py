"""Rewards by name: `load_reward("brightness")`, `load_reward("target_color:1,0,0")`,
`load_reward("imagereward:/models/ImageReward.pt", device="cuda")`,
`load_reward("dino:/models/dino-vits16", reference_images="photos/")` (subject likeness, also `clip_i:`).

A spec is `name` or `name:argument`; keyword options go to the reward's factory.
`register_reward(name, factory)` adds a name (factory(argument, **options) -> RewardFn).
"""

from __future__ import annotations

from typing import Any, Callable

from .base import RewardFn
from .simple import BrightnessReward, TargetColorReward, reward_from_function

RewardFactory = Callable[..., RewardFn]


def _brightness(argument: str | None = None) -> RewardFn:
    if argument:
        raise ValueError(f"brightness takes no argument, got {argument!r}")
    return BrightnessReward()


def _target_color(argument: str | None = None, target: Any = None) -> RewardFn:
    """argument 'r,g,b' in [0, 1] (e.g. 'target_color:1,0,0') or target=(r, g, b)."""
    if argument:
        try:
            target = tuple(float(part) for part in argument.split(","))
        except ValueError:
            raise ValueError(f"target_color takes 'r,g,b' with numbers in [0, 1], got {argument!r}") from None
    return TargetColorReward(tuple(target)) if target is not None else TargetColorReward()


def _imagereward(argument: str | None = None, path: Any = None, **options: Any) -> RewardFn:
    from .image_reward import load_image_reward

    path = argument or path
    if not path:
        raise ValueError("imagereward needs its weight file: 'imagereward:/path/ImageReward.pt' or path=...")
    return load_image_reward(path, **options)


def _dino(argument: str | None = None, **options: Any) -> RewardFn:
    """Subject likeness under DINO: 'dino:/path/dino-vits16', reference_images=folder or tensor."""
    from ..evaluation.subject_measure import dino_reward

    return dino_reward(argument, **options)


def _clip_i(argument: str | None = None, **options: Any) -> RewardFn:
    """Subject likeness under CLIP-I: 'clip_i:/path/clip', reference_images=folder or tensor."""
    from ..evaluation.subject_measure import clip_i_reward

    return clip_i_reward(argument, **options)


def _learned(argument: str | None = None, path: Any = None, **options: Any) -> RewardFn:
    """A reward learned from feedback ('learned:/path/learned.safetensors', instructbooth reward-train);
    options: backbone= (ImageReward weights or scorer; default: the file it names), device=, dtype=."""
    from ..reward_learning.learned import load_learned_reward

    path = argument or path
    if not path:
        raise ValueError("learned needs its file: 'learned:/path/learned.safetensors' or path=...")
    return load_learned_reward(path, **options)


_FACTORIES: dict[str, RewardFactory] = {
    "brightness": _brightness,
    "target_color": _target_color,
    "imagereward": _imagereward,
    "dino": _dino,
    "clip_i": _clip_i,
    "learned": _learned,
}
WEIGHTED_REWARDS = ("imagereward", "dino", "clip_i", "learned")  # specs whose argument is a weights file or folder


def known_rewards() -> list[str]:
    return sorted(_FACTORIES)


def register_reward(name: str, factory: RewardFactory) -> None:
    """Makes `load_reward(name)` call `factory(argument_or_None, **options)`."""
    key = _normalise(name)
    if key in _FACTORIES:
        raise ValueError(f"a reward named {key!r} is already registered")
    _FACTORIES[key] = factory


def load_reward(spec: str | Callable[..., Any], **options: Any) -> RewardFn:
    """A reward from its name (see module doc) or a plain callable (wrapped as a batched reward)."""
    if callable(spec):
        return reward_from_function(spec)
    name, _, argument = str(spec).partition(":")
    key = _normalise(name)
    if key not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(known_rewards())} "
                         f"(add one with register_reward, or pass a function)")
    return _FACTORIES[key](argument or None, **options)


def reward_weights_file(spec: str) -> str | None:
    """The weights file (or folder) a reward spec names ("imagereward:/path/ImageReward.pt",
    "dino:/models/dino-vits16"), if any."""
    name, _, argument = str(spec).partition(":")
    return argument if _normalise(name) in WEIGHTED_REWARDS and argument else None


def device_options(spec: str, device) -> dict:
    """The `device=` option for specs whose reward is a model on a device (see WEIGHTED_REWARDS), else {}."""
    return {"device": device} if _normalise(str(spec).partition(":")[0]) in WEIGHTED_REWARDS else {}


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return "imagereward" if key == "image_reward" else key
