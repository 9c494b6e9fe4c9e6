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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
from PIL import Image
from torch import Tensor

from ..base import check_reward_inputs
from .preprocess import Layout, load_image, preprocess_exact, preprocess_pil_batch, preprocess_tensor
from .config import ImageRewardConfig
from .model import ImageRewardModel
from .weights import load_model_weights, model_from_state_dict
from .tokenizer import PromptTokenizer, TokenizedPrompts

ImageFile = Union[str, os.PathLike, Image.Image]
Images = Union[Tensor, ImageFile, Sequence[ImageFile]]
Prompts = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Ranking:
    """The reference's `inference_rank` result, for one prompt over N images."""

    ranks: list[int]  # ranks[j] = place of image j, 1 = best
    scores: list[float]  # scores[j] = score of image j


class ImageReward:
    """Human-preference score of an image for a prompt (higher is better).

    Also a `RewardFn`: `scorer(images [B, 3, H, W] in [0, 1], prompts, metadata) -> [B]`."""

    name = "imagereward"

    def __init__(self, model: ImageRewardModel, tokenizer: PromptTokenizer | None = None, max_batch_size: int = 8):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer or PromptTokenizer.shipped(model.config.max_length)
        self.max_batch_size = max_batch_size  # images per forward pass; larger inputs are chunked

    @staticmethod
    def load(
        path: str | os.PathLike,
        config: ImageRewardConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 8,
    ) -> "ImageReward":
        """From ImageReward.pt or a safetensors copy; `dtype` is the weights' and compute dtype
        (float16/bfloat16 halve memory; float32 is the reference)."""
        return ImageReward(load_model_weights(path, config, device, dtype), max_batch_size=max_batch_size)

    @staticmethod
    def from_state_dict(
        state_dict: Mapping[str, Tensor],
        config: ImageRewardConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 8,
    ) -> "ImageReward":
        """From official-named tensors already in memory (checked like a file)."""
        return ImageReward(model_from_state_dict(state_dict, config, device, dtype), max_batch_size=max_batch_size)

    @property
    def config(self) -> ImageRewardConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, prompts: Prompts) -> TokenizedPrompts:
        """One prompt or P prompts -> ids and masks [P, max_length]."""
        return self.tokenizer(prompts)

    # --- scoring ---------------------------------------------------------------------------

    def score(self, images: Images, prompts: Prompts, layout: Layout = "auto") -> Tensor:
        """Images (tensor in [0, 1], PIL images or files) and prompts -> float32 scores [B].
        A tensor scores as its pictures saved as 8-bit files would (the exact path)."""
        with torch.no_grad():
            if isinstance(images, Tensor):
                pixels = preprocess_exact(images, self.config.vision.image_size, layout)
                return self.score_pixels(pixels, prompts).to(images.device)
            return self._score_pil(_as_list(images), prompts)

    def score_differentiable(self, images: Tensor, prompts: Prompts, layout: Layout = "auto") -> Tensor:
        """Images in [0, 1] ([B, C, H, W] or [B, H, W, C]) -> float32 scores [B] on the model's
        device; gradients flow to `images` (torch resize and crop, no PIL, no detach)."""
        pixels = preprocess_tensor(images, self.config.vision.image_size, layout)
        return self.score_pixels(pixels, prompts)

    def score_pixels(self, pixels: Tensor, prompts: Prompts) -> Tensor:
        """Normalised pixels [B, 3, S, S] (as preprocessing makes them) -> float32 scores [B]."""
        tokens = self._tokens_for(prompts, pixels.shape[0]).to(self.device)
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        chunks = [
            self.model(pixels[i : i + self.max_batch_size], *_token_chunk(tokens, i, self.max_batch_size))
            for i in range(0, pixels.shape[0], self.max_batch_size)
        ]
        return torch.cat(chunks).float() if chunks else torch.zeros(0, device=self.device)

    def rank(self, prompt: str, images: Images) -> Ranking:
        """The reference's `inference_rank`: place (1 = best) and score of each image."""
        scores = self.score(images, prompt).cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(1, len(order) + 1)
        return Ranking(ranks.tolist(), scores.tolist())

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> Tensor:
        """RewardFn: images [B, 3, H, W] in [0, 1], B prompts -> float32 [B] on images.device."""
        check_reward_inputs(images, prompts, metadata)
        return self.score(images, list(prompts), layout="BCHW")

    # --- helpers ---------------------------------------------------------------------------

    def _score_pil(self, images: list[ImageFile], prompts: Prompts) -> Tensor:
        self._tokens_for(prompts, len(images))  # check the prompt count before reading files
        per_image = not isinstance(prompts, str) and len(prompts) > 1
        scores = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = [_open(image) for image in images[start : start + self.max_batch_size]]
            chunk_prompts = prompts[start : start + len(chunk)] if per_image else prompts
            pixels = preprocess_pil_batch(chunk, self.config.vision.image_size)
            scores.append(self.score_pixels(pixels, chunk_prompts).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def _tokens_for(self, prompts: Prompts, batch: int) -> TokenizedPrompts:
        """One prompt for all B images, or B prompts -> tokens [B, L] (a broadcast view)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) not in (1, batch):
            raise ValueError(f"give one prompt or one per image: {len(prompts)} prompts for {batch} images")
        tokens = self.tokenizer(list(prompts))
        if len(prompts) == 1:
            shape = (batch, tokens.input_ids.shape[1])
            return TokenizedPrompts(tokens.input_ids.expand(shape), tokens.attention_mask.expand(shape))
        return tokens


def load_image_reward(
    path: str | os.PathLike,
    config: ImageRewardConfig | str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    max_batch_size: int = 8,
) -> ImageReward:
    """`ImageReward.load` that also takes a config JSON path and a dtype name ("float16")."""
    if config is not None and not isinstance(config, ImageRewardConfig):
        config = ImageRewardConfig.from_json(config)
    return ImageReward.load(path, config, device, parse_dtype(dtype), max_batch_size)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _as_list(images: Images) -> list[ImageFile]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return list(images)


def _open(image: ImageFile) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    raise ValueError(f"expected a PIL image or an image file path, got {type(image).__name__}")


def _token_chunk(tokens: TokenizedPrompts, start: int, size: int) -> tuple[Tensor, Tensor]:
    return tokens.input_ids[start : start + size], tokens.attention_mask[start : start + size]
