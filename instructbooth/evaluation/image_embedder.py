"""What the CLIP and DINO embedders share: a model on a device, batched image embedding through
the model's own preprocessing, and the mean cosine with reference photos (CLIP-I, DINO)."""

from __future__ import annotations

import torch
from torch import Tensor

from .image_processing import ImageProcessing, Images
from .similarity import mean_reference_cosine


class ImageEmbedder:
    """Subclasses give `_embed_pixels(pixels) -> [b, D]` and `embedding_size`."""

    def __init__(self, model, processing: ImageProcessing, name: str, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.processing, self.name, self.batch_size = model, processing, name, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def embedding_size(self) -> int:
        raise NotImplementedError

    def _embed_pixels(self, pixels: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed_images(self, images: Images) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, D] float32 embeddings (on the CPU), `batch_size` at a time."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processing(images[start : start + self.batch_size]).to(self.device, self.dtype)
            parts.append(self._embed_pixels(pixels).float().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.embedding_size)

    def reference_similarity(self, images: Images, references: Images) -> Tensor:
        """CLIP-I or DINO: per image, the mean cosine with the reference photos, [B]."""
        return mean_reference_cosine(self.embed_images(images), self.embed_images(references))
