"""The RL subject guard's measure: how much each sample looks like the reference photos.

`SubjectLikeness` follows the reward protocol (rewards/base.py):
`(images [B, 3, H, W] in [0, 1], prompts, metadata) -> float32 [B]`, each image's mean cosine
with the reference photos under DINO or CLIP-I (prompts are not used). The references are
embedded once. As reward specs: `load_reward("dino:/models/dino-vits16", reference_images=...)`
and `load_reward("clip_i:/models/clip-vit-large-patch14", reference_images=...)`, where
`reference_images` is a folder of photos, a list of files, or an image tensor ([P, 3, H, W] or
ComfyUI's [P, H, W, 3]) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..rewards.base import as_scores, check_reward_inputs
from .embedders import Embedder, load_embedder
from .similarity import mean_reference_cosine


class SubjectLikeness:
    """Mean cosine of each image with the reference photos (DINO or CLIP-I embeddings)."""

    def __init__(self, embedder: Embedder, references: Tensor | Sequence[Tensor]):
        if len(references) == 0:
            raise ValueError("the subject measure needs at least one reference photo of the subject")
        self.embedder = embedder
        self.name = "dino" if embedder.kind == "dino" else "clip_i"
        self.reference_embeddings = embedder.embed_images(references)  # [P, D]

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        batch = check_reward_inputs(images, prompts, metadata)
        scores = mean_reference_cosine(self.embedder.embed_images(images), self.reference_embeddings)
        return as_scores(scores, batch, images.device, f"subject measure {self.name}")


def reference_pictures(source: Any) -> list[Tensor]:
    """Reference photos as [3, H, W] tensors in [0, 1] (sizes may differ): a folder, files, PIL
    images or an image tensor (BHWC or BCHW)."""
    from ..subject_data import load_subject_images

    if source is None:
        raise ValueError("the subject measure needs the subject's photos: pass reference_images= (a folder of "
                         "photos or an image tensor), e.g. the photos the LoRA was personalized on")
    if isinstance(source, Tensor):
        from ..subject_data import tensor_to_bchw

        return list(tensor_to_bchw(source))
    return [image.pixels for image in load_subject_images(source)]


def subject_measure(kind: str, path: str | Path | None, reference_images: Any = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    batch_size: int = 16) -> SubjectLikeness:
    """A `SubjectLikeness` from weights at `path` ("dino" or "clip") and the reference photos."""
    spec = "dino" if kind == "dino" else "clip_i"
    if not path:
        raise ValueError(f"{spec} needs its weights: '{spec}:/path/to/model' (a transformers folder or one file)")
    references = reference_pictures(reference_images)
    return SubjectLikeness(load_embedder(path, kind, device=device, dtype=dtype, batch_size=batch_size), references)


def dino_reward(argument: str | None = None, path: Any = None, **options: Any) -> SubjectLikeness:
    """Reward factory for `dino:/path` (keyword options: reference_images, device, dtype, batch_size)."""
    return subject_measure("dino", argument or path, **options)


def clip_i_reward(argument: str | None = None, path: Any = None, **options: Any) -> SubjectLikeness:
    """Reward factory for `clip_i:/path` (keyword options: reference_images, device, dtype, batch_size)."""
    return subject_measure("clip", argument or path, **options)
