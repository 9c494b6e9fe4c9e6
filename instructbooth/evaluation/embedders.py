"""One entry point for the evaluation models: `load_embedder(path, kind)` with kind "clip",
"dino" or "auto" (told apart by the config's model_type or the weights' key names)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .clip_embedder import ClipEmbedder, is_clip_state, load_clip
from .dino_embedder import DinoEmbedder, is_dino_state, load_dino
from .weights import SAFETENSORS, EvaluationWeightsError, WeightsSource, locate, read_state_dict

Embedder = Union[ClipEmbedder, DinoEmbedder]
KINDS = ("auto", "clip", "dino")
WHERE = ("put a CLIP (openai/clip-vit-large-patch14) or DINO ViT-S/16 (facebook/dino-vits16) folder or file in "
         "ComfyUI/models/evaluation/, or pass its path")


def load_embedder(path: str | Path, kind: str = "auto", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, batch_size: int = 16) -> Embedder:
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = detect_kind(locate(path, "CLIP or DINO", WHERE))
    load = load_clip if kind == "clip" else load_dino
    return load(path, device=device, dtype=dtype, batch_size=batch_size)


def detect_kind(source: WeightsSource) -> str:
    """"clip" or "dino", from the config's model_type, else from the key names."""
    model_type = (source.config or {}).get("model_type")
    if model_type in ("clip", "vit"):
        return "clip" if model_type == "clip" else "dino"
    keys = _key_names(source)
    if is_clip_state(keys):
        return "clip"
    if is_dino_state(keys):
        return "dino"
    raise EvaluationWeightsError(f"{source.name} is neither a CLIP nor a DINO ViT (keys like "
                                 f"{', '.join(sorted(keys)[:3])}); {WHERE}")


def _key_names(source: WeightsSource) -> dict[str, None]:
    """The weights' key names (safetensors: read from the header only)."""
    if all(p.suffix.lower() in SAFETENSORS for p in source.weights):
        from safetensors import safe_open

        names: dict[str, None] = {}
        for path in source.weights:
            with safe_open(str(path), "pt") as handle:
                names.update(dict.fromkeys(handle.keys()))
        return names
    return dict.fromkeys(read_state_dict(source))
