"""ImageReward (Xu et al. 2023) on plain torch, no transformers model classes: scoring, ranking,
the exact and differentiable tensor paths (details: `scorer`).

Modules: `scorer` (ImageReward: scores, ranking, the exact and differentiable tensor paths),
`model` / `blip` (the BLIP backbone and MLP head on torch), `config`, `weights` (ImageReward.pt or
safetensors, read without running code), `preprocess` (images as the reference reads them),
`tokenizer` (the BERT prompt tokenizer, shipped vocabulary).
"""

from .config import ImageRewardConfig, TextConfig, VisionConfig, infer_config
from .model import ImageRewardModel, random_image_reward_model
from .scorer import ImageReward, Ranking, load_image_reward, parse_dtype
from .tokenizer import PromptTokenizer, TokenizedPrompts
from .weights import ImageRewardWeightsError, WeightsNotFoundError, convert_to_safetensors, read_state_dict

__all__ = [
    "ImageReward", "Ranking", "load_image_reward", "parse_dtype",
    "ImageRewardConfig", "TextConfig", "VisionConfig", "infer_config",
    "ImageRewardModel", "random_image_reward_model",
    "ImageRewardWeightsError", "WeightsNotFoundError", "convert_to_safetensors", "read_state_dict",
    "PromptTokenizer", "TokenizedPrompts",
]
