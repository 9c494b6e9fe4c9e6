"""Reward-learning losses of Lee et al. 2023 (pure tensor functions).

    L(φ) = mean_i (r(x_i, z_i) - y_i)^2  +  λ · L_pc(φ)
    L_pc = mean over the weighted images of  -log softmax_j( r(x_i, z_ij) / T )[0]

r: the reward's score; y in {0, 1}: the human label; z_i0 the true prompt of image i and
z_i1 .. z_i,N-1 perturbed ones (perturb.py). The prompt-classification term asks the reward to
pick the true prompt among its perturbations. By default it counts only images labelled good
(`weights = labels`): a bad image may match a perturbed prompt better than its own (three
circles drawn for "two circles" is right for "three circles"), so asking it to pick its own
prompt would teach the opposite. Lee et al.'s text does not say which images the term covers;
the demo ablation (docs/reward_learning.md) compares both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def label_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error of scores [B] to binary labels [B] (0 bad, 1 good)."""
    return F.mse_loss(scores.float(), labels.float())


def prompt_classification_loss(scores: Tensor, valid: Tensor | None = None, weights: Tensor | None = None,
                                temperature: float = 1.0) -> Tensor:
    """Cross-entropy of the true prompt (column 0) against the others.

    scores [B, N]: the reward of each image with each candidate prompt; valid [B, N] bool (False:
    no such perturbation, left out of the softmax; column 0 must be valid); weights [B] >= 0
    (which images count; None: all). Returns the weighted mean; 0 when no weight is positive."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N] (images x candidate prompts), got {tuple(scores.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = scores.float() / temperature
    if valid is not None:
        if not bool(valid[:, 0].all()):
            raise ValueError("column 0 (the true prompt) must be valid for every image")
        logits = logits.masked_fill(~valid.bool(), float("-inf"))
    per_image = -torch.log_softmax(logits, dim=1)[:, 0]  # [B]
    w = torch.ones_like(per_image) if weights is None else weights.float()
    total = w.sum()
    if float(total) <= 0:
        return per_image.sum() * 0.0  # keeps the graph; nothing to classify in this batch
    return (per_image * w).sum() / total


def reward_learning_loss(scores: Tensor, labels: Tensor, valid: Tensor | None = None, lam: float = 0.5,
                         temperature: float = 1.0, aux_on: str = "good") -> tuple[Tensor, dict[str, float]]:
    """Lee et al.'s loss: MSE on the true prompts' scores + λ · prompt classification.

    scores [B, N] with the true prompt in column 0; labels [B]; aux_on "good" (images labelled
    good) or "all". Returns (loss, {"mse", "prompt_ce"} as floats)."""
    if aux_on not in ("good", "all"):
        raise ValueError(f"aux_on must be 'good' or 'all', got {aux_on!r}")
    mse = label_loss(scores[:, 0], labels)
    if lam == 0 or scores.shape[1] < 2:
        return mse, {"mse": float(mse.detach()), "prompt_ce": 0.0}
    weights = labels.float() if aux_on == "good" else None
    ce = prompt_classification_loss(scores, valid, weights, temperature)
    return mse + lam * ce, {"mse": float(mse.detach()), "prompt_ce": float(ce.detach())}
