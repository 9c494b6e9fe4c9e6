"""Reward learning from binary human feedback (Lee et al. 2023): perturbed prompts, the loss,
a small head on frozen image-text features, and the learned reward file (`learned:` spec).

Importing this package loads no model.
"""

from .features import Backbone, ImageRewardBackbone, cached_pair_features, weights_fingerprint
from .head import HeadConfig, RewardHead
from .learned import LearnedReward, load_learned_reward, read_learned_reward, save_learned_reward
from .loss import label_loss, prompt_classification_loss, reward_learning_loss
from .perturb import candidate_prompts, perturbed_prompts
from .train import RewardTrainConfig, RewardTrainResult, evaluate_head, label_metrics, train_reward_head

__all__ = [
    "Backbone", "ImageRewardBackbone", "cached_pair_features", "weights_fingerprint",
    "HeadConfig", "RewardHead",
    "LearnedReward", "load_learned_reward", "read_learned_reward", "save_learned_reward",
    "label_loss", "prompt_classification_loss", "reward_learning_loss",
    "candidate_prompts", "perturbed_prompts",
    "RewardTrainConfig", "RewardTrainResult", "evaluate_head", "label_metrics", "train_reward_head",
]
