"""BLIP's two towers as compact torch modules, built from a config.

Parameter names inside each tower are those of the official ImageReward.pt below its
`blip.visual_encoder.` / `blip.text_encoder.` prefix, so loading is a prefix swap.
Attention runs through `torch.nn.functional.scaled_dot_product_attention`.

Shapes: B images, T = 1 + (S/P)^2 image tokens of width Wv, L prompt tokens of width Wt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TextConfig, VisionConfig


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, W] -> [B, heads, N, W / heads]."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, D] -> [B, N, heads * D]."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


# --- vision tower (ViT) -------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.channels, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        """[B, C, S, S] -> [B, (S/P)^2, Wv]."""
        return self.proj(pixels).flatten(2).transpose(1, 2)


class FusedSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, W] -> [B, T, W]; every token attends to every token."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class VisionMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = FusedSelfAttention(config.width, config.heads)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config.width, config.mlp_width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Normalised pixels [B, C, S, S] -> image tokens [B, T, Wv] (class token first)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.width))
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(f"the vision tower takes {size}x{size} pixels, got {tuple(pixels.shape)}; preprocess first")
        patches = self.patch_embed(pixels)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# --- text tower (BERT "med" with cross-attention) ---------------------------------------


class TextEmbeddings(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.width)
        self.position_embeddings = nn.Embedding(config.max_positions, config.width)
        self.LayerNorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        """[B, L] token ids -> [B, L, Wt]; absolute positions 0..L-1, no token types."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class HeadsAttention(nn.Module):
    """BERT attention core; keys and values come from `context` (width `context_width`)."""

    def __init__(self, width: int, context_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None) -> Tensor:
        """x [B, L, W], context [B, N, Wc], key_mask [B, 1, 1, N] bool or None -> [B, L, W]."""
        q = _split_heads(self.query(x), self.heads)
        k = _split_heads(self.key(context), self.heads)
        v = _split_heads(self.value(context), self.heads)
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask))


class ResidualNorm(nn.Module):
    """Post-norm output: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_width: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class TextAttention(nn.Module):
    def __init__(self, config: TextConfig, context_width: int):
        super().__init__()
        self.self = HeadsAttention(config.width, context_width, config.heads)
        self.output = ResidualNorm(config.width, config.width, config.layer_norm_eps)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, context, key_mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.dense = nn.Linear(config.width, config.mlp_width)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class TextLayer(nn.Module):
    """Self-attention over the prompt, cross-attention to all image tokens, MLP."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.attention = TextAttention(config, config.width)
        self.crossattention = TextAttention(config, config.encoder_width)
        self.intermediate = Intermediate(config)
        self.output = ResidualNorm(config.mlp_width, config.width, config.layer_norm_eps)

    def forward(self, x: Tensor, text_mask: Tensor, image_tokens: Tensor) -> Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens, None)
        return self.output(self.intermediate(x), x)


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(TextLayer(config) for _ in range(config.depth))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """input_ids, attention_mask [B, L] (1 = token, 0 = padding), image_tokens [B, T, Wv]
        -> hidden states [B, L, Wt]. Padding keys are masked; every image token is attended."""
        text_mask = attention_mask.to(torch.bool)[:, None, None, :]
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, text_mask, image_tokens)
        return x
