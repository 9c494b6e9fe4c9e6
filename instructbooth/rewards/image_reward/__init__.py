"""ImageReward (Xu et al. 2023) on plain torch: load the official weights, score images.

    scorer = ImageReward.load("ImageReward.pt", device="cuda", dtype=torch.float16)
    scores = scorer.score(images, "a photo of sks plushie playing basketball")  # [B] float32

Inputs to `score`:
- a tensor in [0, 1]: [B, C, H, W] or ComfyUI's [B, H, W, C] (found by the dim holding 1, 3
  or 4 channels; pass layout= when both could), any H and W -> quantised to 8 bits as a saved
  PNG and sent through the reference's PIL preprocessing: the scores of the same pictures
  saved as files, exactly (`preprocess_exact`);
- PIL images or image file paths (one or a list) -> the reference's PIL preprocessing
  (scores equal the reference package's within 1e-4 in float32).
`score_differentiable` keeps gradients (torch resize, no PIL); its distance to the exact
path is measured in benchmarks/image_reward_paths.py.
Prompts: one string for all images, or one per image; empty prompts are fine.
Scores are float32: on the images' device for tensors, on the CPU for PIL images and files.

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
