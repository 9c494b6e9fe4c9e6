"""The demo model: a ~3M-parameter pixel-space text-to-image diffusion model of the world.

No VAE: "latents" are 32x32 images folded into 12x16x16 (encoding.PIXEL_FOLD). A small
diffusers UNet2DConditionModel (channels 48/64/96, cross-attention at 8x8, 4x4 and the
middle) is conditioned by a 2-layer, 64-wide CLIPTextModel over a word-level vocabulary.
The shipped weights live beside this file (demo_model.safetensors + demo_model.json);
`scripts/pretrain_demo.py` rebuilds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr
from safetensors.torch import load_file

from ..components import SDComponents, build_text_encoder, build_unet
from ..files import write_json, write_safetensors
from .prompts import CLASS_NOUN, DESCRIPTION, IDENTIFIER
from .world import BACKGROUNDS, COLOURS, COUNT_WORDS, SHAPES

WEIGHTS_NAME = "demo_model.safetensors"
CARD_NAME = "demo_model.json"

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
SPARE_SLOTS = 16  # "<spare0>".. rows for words added after pretraining (add_tokens)


def base_vocabulary() -> list[str]:
    """Every word of the world's captions, then the subject's words (never seen in
    pretraining, so personalization can bind them), then spare slots."""
    world = list(COUNT_WORDS) + list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES]
    world += list(BACKGROUNDS) + ["on", "a", "background"]
    unseen = [IDENTIFIER, CLASS_NOUN, "next", "to"] + DESCRIPTION.split()
    unseen += ["orange", "purple", "diamond", "star", "stripes", "striped", "checkered", "dog", "cat", "toys"]
    words = list(dict.fromkeys(world + unseen))  # ordered, no repeats
    return list(SPECIAL_TOKENS) + words + [f"<spare{i}>" for i in range(SPARE_SLOTS)]


class TokenizerOutput(dict):
    """What the tokenizer returns: `.input_ids` and `.attention_mask` (also as keys)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class WordTokenizer:
    """A whitespace word tokenizer that is called like transformers' CLIPTokenizer.

    Lower-cases, strips punctuation, wraps ids in <bos> .. <eos> and pads with <pad>.
    Unknown words map to <unk>. `add_tokens` turns spare slots into new words.
    """

    def __init__(self, vocabulary: list[str], model_max_length: int = 24):
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has repeated words")
        missing = [t for t in SPECIAL_TOKENS if t not in vocabulary]
        if missing:
            raise ValueError(f"vocabulary lacks special tokens {missing}")
        self.vocabulary = list(vocabulary)
        self.model_max_length = model_max_length
        self._ids = {w: i for i, w in enumerate(self.vocabulary)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = (
            self._ids[t] for t in SPECIAL_TOKENS
        )

    def __len__(self) -> int:
        return len(self.vocabulary)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def words(self, text: str) -> list[str]:
        cleaned = "".join(ch if ch.isalnum() or ch in "<>" else " " for ch in text.lower())
        return cleaned.split()

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._ids.get(tokens, self.unk_token_id)
        return [self._ids.get(t, self.unk_token_id) for t in tokens]

    def encode(self, text: str) -> list[int]:
        """<bos> word ids <eos>, unpadded and untruncated."""
        return [self.bos_token_id] + self.convert_tokens_to_ids(self.words(text)) + [self.eos_token_id]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        special = {self.pad_token_id, self.bos_token_id, self.eos_token_id}
        return " ".join(self.vocabulary[i] for i in ids if i not in special)

    def __call__(
        self,
        text: str | list[str],
        padding: str | bool = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str | None = None,
    ) -> TokenizerOutput:
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t) for t in texts]
        length = max_length or self.model_max_length
        if truncation:
            rows = [r if len(r) <= length else r[: length - 1] + [self.eos_token_id] for r in rows]
        if padding == "max_length":
            target = length
        elif padding in (True, "longest"):
            target = max(len(r) for r in rows)
        else:
            target = 0
        masks = [[1] * len(r) + [0] * max(0, target - len(r)) for r in rows]
        rows = [r + [self.pad_token_id] * max(0, target - len(r)) for r in rows]
        if return_tensors == "pt":
            if len({len(r) for r in rows}) > 1:
                raise ValueError("return_tensors='pt' needs equal lengths: pass padding='max_length'")
            return TokenizerOutput(input_ids=torch.tensor(rows), attention_mask=torch.tensor(masks))
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, not {return_tensors!r}")
        if isinstance(text, str):
            return TokenizerOutput(input_ids=rows[0], attention_mask=masks[0])
        return TokenizerOutput(input_ids=rows, attention_mask=masks)

    def add_tokens(self, words: str | list[str]) -> int:
        """Puts new words into spare slots (no resize needed); returns how many were added."""
        words = [words] if isinstance(words, str) else words
        added = 0
        for word in words:
            if word in self._ids:
                continue
            spare = next((w for w in self.vocabulary if w.startswith("<spare")), None)
            if spare is None:
                raise ValueError(f"no spare vocabulary slot left for {word!r}")
            index = self._ids.pop(spare)
            self.vocabulary[index] = word
            self._ids[word] = index
            added += 1
        return added


# ---- configs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoModelConfig:
    """Architecture and noise schedule of the demo model."""

    block_out_channels: tuple[int, ...] = (48, 64, 96)  # UNet widths at 16x16, 8x8, 4x4
    attention_heads: int = 4  # heads of every UNet attention
    norm_groups: int = 16  # GroupNorm groups (divide every width)
    text_width: int = 64  # CLIP hidden size = UNet cross-attention dim
    text_layers: int = 2  # CLIP transformer layers
    text_heads: int = 4  # CLIP attention heads
    max_length: int = 24  # tokens per prompt, <bos> and <eos> included
    # Noise schedule (diffusers DDPMScheduler fields): SD1.5's scaled-linear betas rescaled
    # to zero terminal SNR, v-prediction, sampling from t=999 ("trailing") - the fix of
    # Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed").
    # Why: the background fills most of the image, so its colour survives in x_t up to
    # t=999 under SD1.5's schedule (read back from x_999 alone 91% of the time): trained
    # that way the model takes the background from the noise, not the prompt, and samples
    # from pure noise come out gray (measured). With DDPM's linear schedule and epsilon
    # prediction the loss barely rewards the prompt at high noise: all gray too.
    # clip_sample keeps x0 estimates inside [-1, 1] (pixel space).
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    rescale_betas_zero_snr: bool = True
    # The last beta after rescaling (1.0 would make alpha_bar_999 exactly 0): 0.5 leaves
    # alpha_bar_999 ~ 1e-7, no visible signal, but keeps 1 - alpha_bar_prev - sigma^2 of
    # a DDIM step with eta = 1 from t=999 positive in float32 (exactly 0 gives NaN there).
    terminal_beta: float = 0.5
    prediction_type: str = "v_prediction"  # or "epsilon"
    clip_sample: bool = True

    def unet_config(self) -> dict[str, Any]:
        return {
            "sample_size": 16,
            "in_channels": 12,
            "out_channels": 12,
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "cross_attention_dim": self.text_width,
            "attention_head_dim": self.attention_heads,  # diffusers reads this as the head count
            "norm_num_groups": self.norm_groups,
        }

    def text_config(self, vocab_size: int) -> dict[str, Any]:
        return {
            "vocab_size": vocab_size,
            "hidden_size": self.text_width,
            "intermediate_size": 4 * self.text_width,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": self.max_length,
            "projection_dim": self.text_width,
            "hidden_act": "quick_gelu",
            "pad_token_id": SPECIAL_TOKENS.index("<pad>"),
            "bos_token_id": SPECIAL_TOKENS.index("<bos>"),
            "eos_token_id": SPECIAL_TOKENS.index("<eos>"),
        }

    def scheduler_config(self) -> dict[str, Any]:
        """DDPMScheduler config. With `rescale_betas_zero_snr` the rescaled betas are
        written out as `trained_betas` (with `terminal_beta` last), so every scheduler
        built from this config (DDIM, DDPM) gets exactly the same alphas."""
        config = {
            "num_train_timesteps": 1000,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "trained_betas": None,
            "rescale_betas_zero_snr": False,
            "clip_sample": self.clip_sample,
            "clip_sample_range": 1.0,
            "prediction_type": self.prediction_type,
            "variance_type": "fixed_small",
            "timestep_spacing": "trailing",
            "steps_offset": 0,
        }
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(DDPMScheduler.from_config(config).betas)
            betas[-1] = self.terminal_beta
            config["trained_betas"] = betas.tolist()
        return config

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DemoModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown demo model config fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def build_demo_components(config: DemoModelConfig = DemoModelConfig(), seed: int = 0) -> SDComponents:
    """Randomly initialised demo components (seeded, eval mode, fp32 CPU)."""
    torch.manual_seed(seed)
    tokenizer = WordTokenizer(base_vocabulary(), config.max_length)
    parts = SDComponents(
        unet=build_unet(config.unet_config()),
        vae=None,
        text_encoder=build_text_encoder(config.text_config(len(tokenizer))),
        tokenizer=tokenizer,
        scheduler=DDPMScheduler.from_config(config.scheduler_config()),
    )
    for module in parts.modules():
        module.eval()
    return parts


# ---- shipped weights --------------------------------------------------------------------


def shipped_weights_path() -> Path:
    return Path(str(resources.files(__package__) / WEIGHTS_NAME))


def demo_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """UNet and text-encoder weights under "unet." and "text_encoder." prefixes."""
    state = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in components.text_encoder.state_dict().items()})
    return state


def save_demo_model(
    components: SDComponents,
    folder: str | Path,
    config: DemoModelConfig,
    card: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Writes WEIGHTS_NAME (weights in `dtype`) and CARD_NAME (config, vocabulary and
    `card`: sampler settings, accuracy, training record) into `folder`, atomically."""
    folder = Path(folder)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in demo_state_dict(components).items()}
    write_safetensors(folder / WEIGHTS_NAME, state, metadata={"format": "instructbooth-demo"})
    record = {"model": config.to_dict(), "vocabulary": components.tokenizer.vocabulary, **(card or {})}
    write_json(folder / CARD_NAME, record)
    return folder / WEIGHTS_NAME


def load_demo_card(folder: str | Path | None = None) -> dict[str, Any]:
    """The JSON card beside the weights (the shipped one when `folder` is None)."""
    path = (Path(folder) if folder else shipped_weights_path().parent) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"demo model card not found at {path}; run scripts/pretrain_demo.py")
    return json.loads(path.read_text())


def load_demo_components(folder: str | Path | None = None, dtype: torch.dtype = torch.float32) -> SDComponents:
    """The pretrained demo model (the shipped one when `folder` is None), eval mode, CPU.

    Keys and shapes are checked strictly: a mismatched file raises with the differences.
    """
    card = load_demo_card(folder)
    path = (Path(folder) if folder else shipped_weights_path().parent) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"demo model weights not found at {path}; run scripts/pretrain_demo.py")
    config = DemoModelConfig.from_dict(card["model"])
    components = build_demo_components(config)
    components.tokenizer = WordTokenizer(card["vocabulary"], config.max_length)
    _load_strict(components, load_file(str(path)))
    return components if dtype == torch.float32 else components.to(dtype=dtype)


def _load_strict(components: SDComponents, state: dict[str, torch.Tensor]) -> None:
    expected = demo_state_dict(components)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"demo weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]} ({len(missing)}/{len(unexpected)}/{len(wrong)} in all)"
        )
    for prefix, module in (("unet.", components.unet), ("text_encoder.", components.text_encoder)):
        part = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
