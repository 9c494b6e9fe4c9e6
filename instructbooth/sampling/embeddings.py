"""Text-encoder outputs per prompt, computed once."""

from __future__ import annotations

from typing import Sequence

import torch

from ..components import SDComponents
from ..encoding import encode_prompts


class PromptEmbeddingCache:
    """Text-encoder outputs per prompt, computed once. Valid while the text encoder is
    unchanged (RL trains UNet LoRA only); call `clear()` after changing it."""

    def __init__(self, components: SDComponents):
        self.components = components
        self._embeddings: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 77, D] embeddings of `prompts` (encoding only the ones not seen before)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._embeddings))
        if missing:
            with torch.no_grad():
                encoded = encode_prompts(self.components, missing)
            self._embeddings.update(zip(missing, encoded))
        return torch.stack([self._embeddings[p] for p in prompts])

    def clear(self) -> None:
        self._embeddings.clear()

    def __len__(self) -> int:
        return len(self._embeddings)
