"""The three numbers DreamBooth and InstructBooth report, as pure tensor functions.

Conventions (stated once, used everywhere in the pack):

- CLIP-T (text fidelity): per image, the cosine of its CLIP image embedding and the CLIP text
  embedding of its prompt, a number in [-1, 1]. `clip_score_100` gives torchmetrics'
  `CLIPScore` convention on the same cosines: 100 * max(mean cosine, 0).
- CLIP-I and DINO (subject fidelity): per generated image, the mean cosine of its embedding
  with every reference photo's; over a set, the mean over all generated x reference pairs
  (DreamBooth's "average pairwise cosine similarity between generated and real images").

Embeddings are [N, D] float tensors; nothing here loads a model.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalized(embeddings: Tensor) -> Tensor:
    """Rows scaled to unit length (float32); a zero row stays zero instead of becoming NaN."""
    embeddings = embeddings.float()
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def paired_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of row i of `a` with row i of `b`: [N, D] x [N, D] -> [N]."""
    if a.shape != b.shape:
        raise ValueError(f"paired_cosine needs embeddings of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (normalized(a) * normalized(b)).sum(dim=-1)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Every row of `a` against every row of `b`: [N, D] x [M, D] -> [N, M]."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embeddings of width {a.shape[-1]} and {b.shape[-1]} cannot be compared; "
                         "embed both sets with the same model")
    return normalized(a) @ normalized(b).T


def mean_reference_cosine(generated: Tensor, references: Tensor) -> Tensor:
    """Per generated image, its mean cosine with the reference photos: [N, D], [M, D] -> [N].
    The mean of the result is the pairwise mean over all N x M pairs (CLIP-I / DINO)."""
    if references.shape[0] == 0:
        raise ValueError("no reference embeddings: subject fidelity needs at least one reference photo")
    return cosine_matrix(generated, references).mean(dim=1)


def clip_score_100(cosines: Tensor) -> float:
    """torchmetrics' CLIPScore of a set of image/prompt cosines: 100 * max(mean, 0)."""
    return float(torch.clamp(100 * cosines.float().mean(), min=0))
