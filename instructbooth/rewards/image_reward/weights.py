"""Reading ImageReward weights: the official `ImageReward.pt` or a safetensors copy.

The file's format is found from its first bytes, not its name. Every failure is an
`ImageRewardWeightsError` (a ValueError) that says what the file is and what to do: missing,
empty, a Git LFS pointer or HTML page instead of the weights, a truncated download, a
pickle with Python objects, a Stable Diffusion checkpoint, a LoRA, or ImageReward weights
with tensors missing, extra or of the wrong shape.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor

from ...files import write_safetensors
from .config import ImageRewardConfig, infer_config
from .model import IGNORED_OFFICIAL_KEYS, ImageRewardModel, from_official_keys, to_official_keys

DOWNLOAD_HINT = "download ImageReward.pt (1.79 GB) from https://huggingface.co/THUDM/ImageReward"
METADATA_FORMAT = "instructbooth.imagereward"  # safetensors metadata "format" of our copies
REQUIRED_OFFICIAL_KEYS = (
    "blip.visual_encoder.patch_embed.proj.weight",
    "blip.visual_encoder.pos_embed",
    "blip.text_encoder.embeddings.word_embeddings.weight",
    "blip.text_encoder.embeddings.position_embeddings.weight",
    "blip.text_encoder.encoder.layer.0.intermediate.dense.weight",
    "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
    "blip.visual_encoder.blocks.0.mlp.fc1.weight",
    "mlp.layers.0.weight",
)


class ImageRewardWeightsError(ValueError):
    """The file is not complete, readable ImageReward weights."""


class WeightsNotFoundError(ImageRewardWeightsError, FileNotFoundError):
    """No file at the given path (also a FileNotFoundError)."""

    def __init__(self, path: str | os.PathLike):
        self.message = f"no ImageReward weights at {path}; {DOWNLOAD_HINT}"
        super().__init__(self.message)
        self.errno, self.filename = errno.ENOENT, str(path)

    def __str__(self) -> str:
        return self.message


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Any weight file -> (tensors on CPU by name, safetensors metadata or {})."""
    path = _existing_file(path)
    kind = _sniff_format(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path, mmap=kind == "torch-zip"), {}


def check_official_keys(path: str | os.PathLike, keys: Iterable[str]) -> None:
    """Raises unless `keys` look like ImageReward's (names the foreign kind when it can)."""
    keys = list(keys)
    missing = [key for key in REQUIRED_OFFICIAL_KEYS if key not in keys]
    if not missing:
        return
    what = describe_foreign_keys(keys)
    if what:
        raise ImageRewardWeightsError(f"{path} is {what}, not ImageReward weights; {DOWNLOAD_HINT}")
    raise ImageRewardWeightsError(
        f"{path} is missing ImageReward tensors such as {missing[0]!r}: it holds {len(keys)} tensors "
        f"{_examples(keys)}. {DOWNLOAD_HINT} (or give the file converted from it)"
    )


def describe_foreign_keys(keys: list[str]) -> str | None:
    """Names a well-known kind of weight file from its key names, else None."""
    def has(*prefixes: str) -> bool:
        return any(key.startswith(prefixes) for key in keys)

    if has("model.diffusion_model."):
        return "a Stable Diffusion checkpoint (keys model.diffusion_model.*)"
    if has("lora_unet_", "lora_te_") or any(".lora_down." in key or ".lora_A." in key for key in keys):
        return "a LoRA file (keys lora_unet_* / lora_te_*)"
    if has("down_blocks.", "conv_in.") and has("up_blocks."):
        return "a diffusers UNet"
    if has("encoder.down.", "decoder.up.", "first_stage_model."):
        return "a VAE"
    if has("text_model.", "cond_stage_model."):
        return "a CLIP text encoder"
    if has("blip.") and not has("mlp.layers."):
        return "BLIP weights without ImageReward's reward head (mlp.layers.*)"
    if not keys:
        return "an empty state dict"
    return None


def load_model_weights(
    path: str | os.PathLike,
    config: ImageRewardConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ImageRewardModel:
    """Reads, checks strictly and loads a weight file into a new model (eval mode).

    `config`: when None, the one stored in our safetensors copies, else sizes inferred from
    the shapes (see `infer_config`). Extra tensors the official file carries for retrieval
    (`blip.vision_proj`, `blip.text_proj`, `embeddings.position_ids`) are ignored."""
    state_dict, metadata = read_state_dict(path)
    check_official_keys(path, state_dict)
    config = config or config_from_metadata(metadata) or infer_config(state_dict)
    return model_from_state_dict(state_dict, config, device, dtype, source=str(path))


def model_from_state_dict(
    state_dict: Mapping[str, Tensor],
    config: ImageRewardConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "the state dict",
) -> ImageRewardModel:
    """Official-named tensors -> ImageRewardModel on `device` in `dtype`, every tensor checked."""
    mapped, unknown = from_official_keys(state_dict)
    with torch.device("meta"):
        model = ImageRewardModel(config)
    _check_strict(source, model, mapped, unknown)
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def convert_to_safetensors(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: ImageRewardConfig | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Writes a checked safetensors copy of `src` atomically: the scoring tensors with their
    official names (retrieval projections dropped), in `dtype` (default: as stored), and the
    config in the metadata so the copy loads with no config argument."""
    state_dict, metadata = read_state_dict(src)
    check_official_keys(src, state_dict)
    config = config or config_from_metadata(metadata) or infer_config(state_dict)
    model = model_from_state_dict(state_dict, config, dtype=dtype or _stored_dtype(state_dict), source=str(src))
    tensors = to_official_keys(model.state_dict())
    info = {"format": METADATA_FORMAT, "config": config.to_json(), "source": Path(src).name}
    return write_safetensors(dst, tensors, metadata=info)


def config_from_metadata(metadata: Mapping[str, str]) -> ImageRewardConfig | None:
    if metadata.get("format") != METADATA_FORMAT or "config" not in metadata:
        return None
    return ImageRewardConfig.from_dict(json.loads(metadata["config"]))


# --- reading files ------------------------------------------------------------------------


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise WeightsNotFoundError(path)
    if path.is_dir():
        raise ImageRewardWeightsError(f"{path} is a folder; give the weight file itself (ImageReward.pt)")
    if path.stat().st_size == 0:
        raise ImageRewardWeightsError(f"{path} is empty (0 bytes): the download did not finish; {DOWNLOAD_HINT}")
    return path


def _sniff_format(path: Path) -> str:
    """'safetensors', 'torch-zip' or 'torch-legacy' from the first bytes; raises otherwise."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        found = "a Git LFS pointer (a small text file), not the weights: fetch the real file"
    elif text.startswith((b"<!doctype", b"<html")):
        found = "an HTML page (a failed or login-walled download)"
    else:
        found = f"neither a PyTorch nor a safetensors file (it starts with {head[:16]!r})"
    raise ImageRewardWeightsError(f"{path} is {found}; {DOWNLOAD_HINT}")


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            check_official_keys(path, keys)  # before reading gigabytes of a foreign file
            return {key: handle.get_tensor(key) for key in keys}, metadata
    except ImageRewardWeightsError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError (an Exception)
        raise _corrupt(path, error) from error


def _read_torch(path: Path, mmap: bool) -> dict[str, Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise ImageRewardWeightsError(
                f"{path} holds Python objects besides tensors (a training checkpoint or an unrelated "
                f"pickle), which are not loaded for safety; ImageReward.pt is a plain state dict. {DOWNLOAD_HINT}"
            ) from error
        raise _corrupt(path, error) from error
    return _plain_state_dict(path, loaded)


def _plain_state_dict(path: Path, loaded: object) -> dict[str, Tensor]:
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ImageRewardWeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors; {DOWNLOAD_HINT}")
    return loaded


def _corrupt(path: Path, error: Exception) -> ImageRewardWeightsError:
    size_mb = path.stat().st_size / 2**20
    return ImageRewardWeightsError(
        f"{path} ({size_mb:.1f} MB) is incomplete or corrupt ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:200]}); the official ImageReward.pt is 1.79 GB: {DOWNLOAD_HINT} again"
    )


# --- strict check -------------------------------------------------------------------------


def _check_strict(source: str, model: ImageRewardModel, mapped: Mapping[str, Tensor], unknown: list[str]) -> None:
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(unknown + [key for key in mapped if key not in expected])
    wrong = [
        f"{key} {tuple(mapped[key].shape)} (expected {expected[key]})"
        for key in mapped
        if key in expected and tuple(mapped[key].shape) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} tensors missing {_examples(_official(missing))}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors {_examples(_official(unexpected))}")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape {_examples(wrong)}")
    if problems:
        raise ImageRewardWeightsError(
            f"{source} does not match the ImageReward architecture: {'; '.join(problems)}. "
            f"A partial file needs downloading again; for other sizes pass a matching config "
            f"(ImageRewardConfig.from_json). Ignored extras: {', '.join(IGNORED_OFFICIAL_KEYS)}"
        )


def _official(keys: list[str]) -> list[str]:
    return list(to_official_keys({key: None for key in keys if key.startswith(("vision.", "text.", "head."))})) + [
        key for key in keys if not key.startswith(("vision.", "text.", "head."))
    ]


def _examples(items: list[str], count: int = 3) -> str:
    shown = ", ".join(items[:count])
    return f"(e.g. {shown}{', ...' if len(items) > count else ''})"


def _stored_dtype(state_dict: Mapping[str, Tensor]) -> torch.dtype:
    floats = [value.dtype for value in state_dict.values() if value.is_floating_point()]
    return floats[0] if floats else torch.float32
