"""A learned reward from a feedback folder: labels and prompts -> candidates -> features -> head.

    items = read_feedback("feedback/")
    result = learn_from_feedback(items, ImageRewardBackbone(scorer, "ImageReward.pt"), RewardTrainConfig())

Every refusal (no labels, one class only) comes before any feature is computed.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..feedback import FeedbackItem, load_feedback_images
from .features import Backbone, cached_pair_features, file_sha256
from .perturb import candidate_prompts
from .train import RewardTrainConfig, RewardTrainResult, check_training_data, train_reward_head


def feedback_labels(items: Sequence[FeedbackItem]) -> torch.Tensor:
    """[M] float labels (1 good, 0 bad), refused at once when they cannot train a reward."""
    labels = torch.tensor([1.0 if item.good else 0.0 for item in items])
    check_training_data(torch.zeros(len(items), 1, 1), torch.ones(len(items), 1, dtype=torch.bool), labels)
    return labels


def learn_from_feedback(items: Sequence[FeedbackItem], backbone: Backbone, config: RewardTrainConfig = RewardTrainConfig(),
                        cache_dir: str | os.PathLike | None = None, taxonomy=None, callback=None) -> RewardTrainResult:
    """Trains a head on `backbone`'s features of the labelled images and their perturbed prompts."""
    labels = feedback_labels(items)
    candidates = candidate_prompts([item.prompt for item in items], config.num_prompts, config.seed, taxonomy)
    keys = [file_sha256(item.image) for item in items] if cache_dir is not None else []
    features, valid = cached_pair_features(backbone, load_feedback_images(items), candidates, cache_dir, keys)
    check_training_data(features, valid, labels, backbone.feature_size)
    return train_reward_head(features, valid, labels, config, backbone.image_feature_size, callback)


def metrics_lines(metrics: dict[str, dict[str, float]]) -> list[str]:
    """Human-readable metric lines ("validation: accuracy 0.850, ...") for a report."""
    names = ("count", "good_share", "accuracy", "balanced_accuracy", "auc", "brier", "ece", "prompt_accuracy")
    lines = []
    for part, values in metrics.items():
        shown = [f"{name} {values[name]:.0f}" if name == "count" else f"{name} {values[name]:.3f}"
                 for name in names if name in values]
        lines.append(f"{part}: " + ", ".join(shown))
    return lines
