"""Rewards: the interface RL trainers call, ImageReward, cheap rewards, best-of-N.

Importing this package loads no model and no tokenizer.
"""

from .base import RewardFn, as_scores, check_reward_inputs
from .best_of_n import BestOfN, best_of_n
from .image_reward import (
    ImageReward,
    ImageRewardConfig,
    ImageRewardModel,
    ImageRewardWeightsError,
    PromptTokenizer,
    Ranking,
    TextConfig,
    TokenizedPrompts,
    VisionConfig,
    WeightsNotFoundError,
    convert_to_safetensors,
    infer_config,
    load_image_reward,
    parse_dtype,
    random_image_reward_model,
    read_state_dict,
)
from .registry import known_rewards, load_reward, register_reward
from .simple import BrightnessReward, FunctionReward, TargetColorReward, reward_from_function

__all__ = [
    "RewardFn", "as_scores", "check_reward_inputs",
    "BestOfN", "best_of_n",
    "ImageReward", "Ranking", "load_image_reward", "parse_dtype",
    "ImageRewardConfig", "TextConfig", "VisionConfig", "infer_config",
    "ImageRewardModel", "random_image_reward_model",
    "ImageRewardWeightsError", "WeightsNotFoundError", "convert_to_safetensors", "read_state_dict",
    "PromptTokenizer", "TokenizedPrompts",
    "known_rewards", "load_reward", "register_reward",
    "BrightnessReward", "FunctionReward", "TargetColorReward", "reward_from_function",
]
