"""Training the learned reward's head on cached features, and how well it predicts labels.

    result = train_reward_head(features, valid, labels, RewardTrainConfig(lam=0.5), image_size)

features [M, N, F] (image x candidate prompt, true prompt first), valid [M, N], labels [M] in
{0, 1}. A seeded share of the images (`validation_fraction`) is held out; the metrics of both
parts are reported: label accuracy at 0.5, balanced accuracy, AUC, Brier score, expected
calibration error (10 equal-width bins of the clamped score) and, for good images, how often
the true prompt scores highest among its candidates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from .head import HeadConfig, RewardHead
from .loss import reward_learning_loss

CALIBRATION_BINS = 10


@dataclass(frozen=True)
class RewardTrainConfig:
    """Reward learning (Lee et al. 2023, section 3.2)."""

    lam: float = 0.5  # λ: weight of the prompt-classification loss (0 = labels only)
    num_prompts: int = 4  # N: the true prompt + N-1 perturbed ones per image
    temperature: float = 1.0  # T: softmax temperature over the N candidates' scores
    aux_on: str = "good"  # images the prompt-classification loss counts: "good" or "all"
    hidden: int = 128  # width of the head's hidden layers
    epochs: int = 60  # passes over the training images
    batch_size: int = 64  # images per step
    learning_rate: float = 1e-3  # AdamW
    weight_decay: float = 1e-2  # AdamW
    validation_fraction: float = 0.2  # share of images held out for the reported metrics
    seed: int = 0  # split, initialisation and batch order

    def __post_init__(self) -> None:
        problems = []
        if not (self.lam >= 0 and np.isfinite(self.lam)):
            problems.append(f"lam (λ) must be a finite number >= 0, got {self.lam}")
        if self.num_prompts < 1:
            problems.append(f"num_prompts (N) must be >= 1, got {self.num_prompts}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            problems.append(f"temperature must be positive, got {self.temperature}")
        if self.aux_on not in ("good", "all"):
            problems.append(f"aux_on must be 'good' or 'all', got {self.aux_on!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1:
            problems.append("epochs, batch_size and hidden must be >= 1")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RewardTrainResult:
    head: RewardHead
    metrics: dict[str, dict[str, float]]  # "train" and (if any) "validation"
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, mse, prompt_ce


def check_training_data(features: Tensor, valid: Tensor, labels: Tensor, feature_size: int | None = None) -> None:
    """Refuses data a reward cannot learn from, with what to bring instead."""
    count = int(labels.numel())
    if count == 0:
        raise ValueError("no labelled images: label some images good and some bad first "
                         "(feedback folder: good/ and bad/ with a .txt prompt beside each image)")
    good = int((labels > 0.5).sum())
    if good in (0, count):
        which = "good" if good else "bad"
        raise ValueError(f"all {count} labelled images are {which}: a reward needs both good and bad examples; "
                         f"label some images {'bad' if good else 'good'} too")
    if features.ndim != 3 or features.shape[0] != count or valid.shape != features.shape[:2]:
        raise ValueError(f"features must be [M, N, F] with M = {count} labels and valid [M, N]; got "
                         f"{tuple(features.shape)} and {tuple(valid.shape)}")
    if feature_size is not None and features.shape[-1] != feature_size:
        raise ValueError(f"mismatched feature sizes: the head takes {feature_size} features, the backbone gives "
                         f"{features.shape[-1]}; train the head on this backbone's features")


def split_indices(count: int, fraction: float, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(train, validation) indices, stratified by label, seeded; validation empty for fraction 0."""
    generator = torch.Generator().manual_seed(seed)
    train, held = [], []
    for value in (0, 1):
        members = torch.nonzero((labels > 0.5) == bool(value)).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = int(round(fraction * len(members)))
        held.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def train_reward_head(features: Tensor, valid: Tensor, labels: Tensor, config: RewardTrainConfig = RewardTrainConfig(),
                      image_size: int = 0, callback=None) -> RewardTrainResult:
    """Fits a RewardHead on frozen features with Lee et al.'s loss; callback(epoch, losses) per epoch."""
    labels = labels.float().flatten()
    check_training_data(features, valid, labels)
    features, valid = features.float(), valid.bool()
    train_idx, held_idx = split_indices(len(labels), config.validation_fraction, labels, config.seed)
    torch.manual_seed(config.seed)
    head = RewardHead(HeadConfig(features.shape[-1], image_size, config.hidden))
    head.set_standardisation(features[train_idx][valid[train_idx]])
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed + 1)
    history = []
    head.train()
    for epoch in range(config.epochs):
        sums = {"loss": 0.0, "mse": 0.0, "prompt_ce": 0.0}
        batches = train_idx[torch.randperm(len(train_idx), generator=generator)].split(config.batch_size)
        for batch in batches:
            scores = head(features[batch])
            loss, parts = reward_learning_loss(scores, labels[batch], valid[batch], config.lam, config.temperature,
                                               config.aux_on)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for key, value in (("loss", float(loss.detach())), *parts.items()):
                sums[key] += value / len(batches)
        history.append({"epoch": epoch + 1, **sums})
        if callback is not None:
            callback(epoch + 1, sums)
    head.eval()
    metrics = {"train": evaluate_head(head, features[train_idx], valid[train_idx], labels[train_idx])}
    if len(held_idx):
        metrics["validation"] = evaluate_head(head, features[held_idx], valid[held_idx], labels[held_idx])
    return RewardTrainResult(head, metrics, history)


@torch.no_grad()
def evaluate_head(head: RewardHead, features: Tensor, valid: Tensor, labels: Tensor) -> dict[str, float]:
    """Label metrics of a head's true-prompt scores (column 0) and its prompt-classification accuracy."""
    scores = head(features.float())
    metrics = label_metrics(scores[:, 0], labels)
    good = labels > 0.5
    if int(good.sum()) and scores.shape[1] > 1:
        masked = scores.masked_fill(~valid.bool(), float("-inf"))[good]
        metrics["prompt_accuracy"] = float((masked.argmax(1) == 0).float().mean())
    return metrics


def label_metrics(scores: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """Accuracy at 0.5, balanced accuracy, AUC, Brier score and ECE of scores [M] against labels [M]."""
    scores, labels = scores.detach().float().cpu(), labels.detach().float().cpu()
    good = labels > 0.5
    predicted = scores > 0.5
    probability = scores.clamp(0, 1)
    metrics = {"count": float(len(labels)), "good_share": float(good.float().mean()) if len(labels) else 0.0,
               "accuracy": float((predicted == good).float().mean()) if len(labels) else float("nan"),
               "brier": float(((probability - labels) ** 2).mean()) if len(labels) else float("nan"),
               "ece": expected_calibration_error(probability, labels, bins)}
    if good.any() and (~good).any():
        metrics["balanced_accuracy"] = 0.5 * (float(predicted[good].float().mean())
                                              + float((~predicted[~good]).float().mean()))
        metrics["auc"] = area_under_curve(scores, good)
    return metrics


def expected_calibration_error(probability: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Sum over equal-width bins of (share of images in the bin) x |mean label - mean probability|."""
    if not len(labels):
        return float("nan")
    index = (probability * bins).long().clamp(0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += float(members.float().mean()) * abs(float(labels[members].mean() - probability[members].mean()))
    return total


def area_under_curve(scores: Tensor, good: Tensor) -> float:
    """P(score of a random good image > a random bad one), ties counting one half."""
    positive, negative = scores[good], scores[~good]
    greater = (positive[:, None] > negative[None]).float().mean()
    ties = (positive[:, None] == negative[None]).float().mean()
    return float(greater + 0.5 * ties)
