"""CLIP image and text embeddings (CLIP-T, CLIP-I) from weights the user brings.

Embeddings are the projected features transformers' `CLIPModel.get_image_features` /
`get_text_features` return (the same ones torchmetrics' CLIPScore compares). Prompts are
tokenized with the model folder's tokenizer (or, for a single weights file, the CLIP BPE
tokenizer shipped with the pack, which is OpenAI CLIP's), padded to the model's length.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .image_processing import ImageProcessing, Images, read_processor_config
from .image_embedder import ImageEmbedder
from .similarity import paired_cosine
from .transformers_loading import build_from_state
from .weights import EvaluationWeightsError, WeightsSource, describe_keys, locate, read_state_dict

WHERE = ("put a CLIP (e.g. openai/clip-vit-large-patch14 or clip-vit-base-patch32: config.json, model.safetensors "
         "and the tokenizer files) in ComfyUI/models/evaluation/ or pass its path (--clip)")
VISION_KEY = "vision_model.embeddings.patch_embedding.weight"
TEXT_KEY = "text_model.embeddings.token_embedding.weight"


class ClipEmbedder(ImageEmbedder):
    """CLIP for scoring: `text_similarity` (CLIP-T) and `reference_similarity` (CLIP-I)."""

    kind = "clip"

    def __init__(self, model, tokenizer, processing: ImageProcessing, name: str = "CLIP", batch_size: int = 16):
        super().__init__(model, processing, name, batch_size)
        self.tokenizer = tokenizer
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @property
    def embedding_size(self) -> int:
        return self.model.config.projection_dim

    def _embed_pixels(self, pixels: Tensor) -> Tensor:
        """Projected image features [b, P]."""
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> Tensor:
        """B prompts -> [B, P] float32 projected text features (on the CPU); long prompts are cut."""
        parts = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(list(prompts[start : start + self.batch_size]), padding="max_length",
                                    truncation=True, max_length=self.max_length, return_tensors="pt")
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            parts.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(parts)

    def text_similarity(self, images: Images, prompts: Sequence[str]) -> Tensor:
        """CLIP-T: cosine of each image with its prompt, [B] in [-1, 1] (one prompt, or one per image)."""
        prompts = list(prompts) * len(images) if len(prompts) == 1 else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"give one prompt or one per image: {len(prompts)} prompts for {len(images)} images")
        return paired_cosine(self.embed_images(images), self.embed_texts(prompts))



def load_clip(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              batch_size: int = 16) -> ClipEmbedder:
    """A CLIP from a transformers folder or one weights file (see weights.py); offline."""
    source = locate(path, "CLIP", WHERE)
    state = read_state_dict(source)
    require_clip(state, source.name)
    config = clip_config(source, state)
    from transformers import CLIPModel

    model = build_from_state(CLIPModel, config, state, source.name, "CLIP").to(device, dtype)
    fallback = ImageProcessing.clip_default(int(config.vision_config.image_size))
    processor = read_processor_config(source.folder) if source.config is not None else None
    processing = ImageProcessing.from_config(processor, fallback) if processor else fallback
    return ClipEmbedder(model, clip_tokenizer(source, config), processing, source.name, batch_size)


def is_clip_state(state: dict[str, Tensor]) -> bool:
    return VISION_KEY in state or TEXT_KEY in state


def require_clip(state: dict[str, Tensor], name: str) -> None:
    if VISION_KEY in state and TEXT_KEY in state and "visual_projection.weight" in state:
        return
    if VISION_KEY in state:
        raise EvaluationWeightsError(f"{name} is a CLIP vision tower only (like ComfyUI's models/clip_vision files); "
                                     f"CLIP-T needs the text tower too: {WHERE}")
    raise EvaluationWeightsError(f"{name} is not a transformers CLIP model (its keys: {describe_keys(state)}; "
                                 f"expected {VISION_KEY}, {TEXT_KEY}, ...); {WHERE}")


def clip_config(source: WeightsSource, state: dict[str, Tensor]):
    """The folder's / sidecar config, or one inferred from the tensor shapes (heads = width / 64,
    quick GELU: OpenAI's CLIPs)."""
    from transformers import CLIPConfig

    if source.config is not None:
        if source.config.get("model_type", "clip") != "clip":
            raise EvaluationWeightsError(f"the config beside {source.name} describes a "
                                         f"{source.config.get('model_type')!r} model, not CLIP; {WHERE}")
        return CLIPConfig.from_dict(source.config)
    return CLIPConfig(text_config=_tower_config(state, "text_model"), vision_config=_tower_config(state, "vision_model"),
                      projection_dim=int(state["visual_projection.weight"].shape[0]))


def _tower_config(state: dict[str, Tensor], tower: str) -> dict:
    layers = {int(m.group(1)) for k in state if (m := re.match(rf"{tower}\.encoder\.layers\.(\d+)\.", k))}
    intermediate = int(state[f"{tower}.encoder.layers.0.mlp.fc1.weight"].shape[0])
    if tower == "text_model":
        vocab, width = state[TEXT_KEY].shape
        positions = int(state["text_model.embeddings.position_embedding.weight"].shape[0])
        return dict(vocab_size=int(vocab), hidden_size=int(width), intermediate_size=intermediate,
                    num_hidden_layers=len(layers), num_attention_heads=max(1, int(width) // 64),
                    max_position_embeddings=positions, hidden_act="quick_gelu")
    width, _, patch, _ = state[VISION_KEY].shape
    positions = int(state["vision_model.embeddings.position_embedding.weight"].shape[0]) - 1
    return dict(hidden_size=int(width), intermediate_size=intermediate, num_hidden_layers=len(layers),
                num_attention_heads=max(1, int(width) // 64), image_size=int(round(positions**0.5)) * int(patch),
                patch_size=int(patch), hidden_act="quick_gelu")


def clip_tokenizer(source: WeightsSource, config):
    """The folder's tokenizer files, else the shipped CLIP BPE tokenizer (vocabulary 49408)."""
    from transformers import CLIPTokenizer

    folder = source.folder
    has_files = (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file()
                                                          and (folder / "merges.txt").is_file())
    if has_files and source.config is not None:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    else:
        from ..components import load_tokenizer

        tokenizer = load_tokenizer()
    vocab = int(config.text_config.vocab_size)
    if len(tokenizer) > vocab:
        raise EvaluationWeightsError(f"the tokenizer has {len(tokenizer)} tokens but {source.name}'s text model "
                                     f"{vocab}; put the model's tokenizer files (vocab.json, merges.txt) beside it")
    return tokenizer
