"""LoRA files: safetensors in kohya key names, with metadata other tools can show.

Besides our own `instructbooth.*` keys (read back exactly by `load_lora`), a file carries
the common kohya (`ss_*`) and modelspec keys, so ComfyUI, A1111/Forge, Civitai and the
like show rank, alpha, base model family and trigger phrase. Third-party kohya files
load too; their metadata fills what it can.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .. import __version__
from ..files import write_safetensors
from .keys import DOWN, check_kohya_state, split_key
from .keys import LoraError
from ..training import non_finite_keys

OUR_PREFIX = "instructbooth."
METHODS = ("personalize", "ddpo", "rwr", "lee", "dpo", "merged")


@dataclass
class LoraMetadata:
    """What a LoRA file says about itself. Strings are "" and numbers 0 when unknown."""

    trigger_phrase: str = ""  # what to write in a prompt, e.g. "sks plushie"
    identifier: str = ""  # the rare token bound to the subject, e.g. "sks"
    class_noun: str = ""  # the subject's class, e.g. "plushie"
    description: str = ""
    base_model_hash: str = ""  # sha256 (hex) of the base checkpoint file; "weights:<sha256>" of its tensors when
    #                            trained in ComfyUI, which hands nodes the weights but not the file
    method: str = ""  # one of METHODS for our files
    training_config: dict = field(default_factory=dict)  # JSON-able; normalised through JSON on creation
    package_version: str = __version__  # instructbooth version that wrote the file
    rank: int = 0  # network dim; 0 = take it from the tensors when saving
    alpha: float = 0.0  # network alpha; 0 = equal to the rank

    def __post_init__(self):
        if self.method and self.method not in METHODS:
            raise LoraError(f"unknown LoRA method {self.method!r}; known: {', '.join(METHODS)}")
        self.training_config = json.loads(json.dumps(self.training_config, default=str))

    @classmethod
    def naming(cls, subject, **fields) -> "LoraMetadata":
        """Metadata whose subject fields come from `subject` (a `prompts.Subject`; None: no subject)."""
        if subject is None:
            return cls(**fields)
        return cls(trigger_phrase=subject.trigger_phrase, identifier=subject.identifier, class_noun=subject.class_noun,
                   description=subject.description, **fields)


def save_lora(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: LoraMetadata) -> Path:
    """Writes a kohya state as safetensors with string metadata, atomically. A state holding
    NaN or inf is refused (it would make every image black), and nothing is written."""
    check_kohya_state(state)
    broken = non_finite_keys(state)
    if broken:
        raise LoraError(f"the LoRA for {Path(path).name} holds NaN or inf values ({len(broken)} tensors, e.g. "
                        f"{broken[0]}): training diverged; nothing was written. Lower the learning rate or check "
                        "the settings for inf/NaN")
    return write_safetensors(path, state, metadata_strings(state, metadata, title=Path(path).stem))


def metadata_strings(state: dict[str, torch.Tensor], meta: LoraMetadata, title: str = "") -> dict[str, str]:
    """Our keys plus kohya's `ss_*` and modelspec keys, all strings."""
    rank = meta.rank or _rank_of(state)
    alpha = meta.alpha or float(rank)
    ours = {f.name: getattr(meta, f.name) for f in fields(meta)}
    ours.update(rank=rank, alpha=alpha, training_config=json.dumps(meta.training_config, sort_keys=True))
    strings = {OUR_PREFIX + k: str(v) for k, v in ours.items()}
    common = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_training_comment": meta.description,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": title or meta.trigger_phrase,
        "modelspec.resolution": trained_resolution(meta.training_config),
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": meta.trigger_phrase,
        "modelspec.description": meta.description,
    }
    strings.update({k: v for k, v in common.items() if v})  # blanks would only clutter other tools' views
    if meta.base_model_hash and ":" not in meta.base_model_hash:  # kohya's field means the file's hash
        strings["ss_new_sd_model_hash"] = meta.base_model_hash
    return strings


def trained_resolution(training_config: dict) -> str:
    """"<width>x<height>" of the images a LoRA was trained on, from its training config
    (personalization's `resolution`, RL's `rl.width` / `rl.height`, DPO's `resolution`); ""
    when the config does not say."""
    for section in (training_config, training_config.get("rl", {}), training_config.get("dpo", {})):
        if isinstance(section, dict) and "width" in section and "height" in section:
            return f"{section['width']}x{section['height']}"
        if isinstance(section, dict) and "resolution" in section:
            return f"{section['resolution']}x{section['resolution']}"
    return ""


def _rank_of(state: dict[str, torch.Tensor]) -> int:
    """The largest rank among the modules of a state."""
    return max(t.shape[0] for k, t in state.items() if split_key(k)[1] == DOWN)


def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LoraMetadata]:
    """Reads a kohya SD1.5 LoRA safetensors file (ours or third-party) -> (state, metadata).

    Tensors keep their stored dtype. Raises FileNotFoundError for a missing file and
    LoraError for a file that is not safetensors or not an SD1.5 kohya LoRA."""
    path = Path(path)
    state, strings = _read_safetensors(path)
    try:
        check_kohya_state(state)
    except LoraError as err:
        raise LoraError(f"{path.name}: {err}") from None
    return state, metadata_from_strings(strings, state)


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw string metadata of a safetensors file (empty when it has none)."""
    return _read_safetensors(Path(path), tensors=False)[1]


def _read_safetensors(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            strings = dict(handle.metadata() or {})
            state = {k: handle.get_tensor(k) for k in handle.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise LoraError(f"{path.name} is not a readable safetensors file ({err}); "
                        f"LoRA files must be .safetensors (pickled .ckpt/.pt files are not read)") from None
    return state, strings


def metadata_from_strings(strings: dict[str, str], state: dict[str, torch.Tensor]) -> LoraMetadata:
    """Our keys when present, else what kohya/modelspec keys say, else blanks."""
    def pick(*keys: str, default: str = "") -> str:
        return next((strings[k] for k in keys if strings.get(k)), default)

    rank = _int_or(pick(OUR_PREFIX + "rank", "ss_network_dim"), _rank_of(state))
    return LoraMetadata(
        trigger_phrase=pick(OUR_PREFIX + "trigger_phrase", "modelspec.trigger_phrase"),
        identifier=pick(OUR_PREFIX + "identifier"),
        class_noun=pick(OUR_PREFIX + "class_noun"),
        description=pick(OUR_PREFIX + "description", "modelspec.description", "ss_training_comment"),
        base_model_hash=pick(OUR_PREFIX + "base_model_hash", "ss_new_sd_model_hash", "ss_sd_model_hash"),
        method=_known_method(pick(OUR_PREFIX + "method")),
        training_config=_json_dict(pick(OUR_PREFIX + "training_config", default="{}")),
        package_version=pick(OUR_PREFIX + "package_version"),
        rank=rank,
        alpha=_float_or(pick(OUR_PREFIX + "alpha", "ss_network_alpha"), float(rank)),
    )


def _known_method(text: str) -> str:
    return text if text in METHODS else ""


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _float_or(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
