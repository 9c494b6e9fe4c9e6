"""Between pixels, latents and prompts: the encoders every stage shares.

Images are float tensors in [0, 1], BCHW. "Latents" are what the UNet sees: VAE latents
times the scaling factor for SD1.5, or, for pixel-space models without a VAE (the
embedded demo world), the image in [-1, 1] with each 2x2 pixel block folded into
channels (3xHxW -> 12x(H/2)x(W/2), lossless).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .components import SDComponents

PIXEL_FOLD = 2  # pixel-space models fold FOLDxFOLD pixel blocks into channels


def tokenize(components: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, 77] padded to the tokenizer's maximum length, truncated if longer."""
    tokenizer = components.tokenizer
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(components.device)


def encode_prompts(components: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Text-encoder last hidden states [B, 77, D], SD1.5's conditioning."""
    encoder = components.text_encoder
    return encoder(tokenize(components, prompts)).last_hidden_state


def encode_images(
    components: SDComponents, images: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> latents [B, C, h, w] (a VAE posterior sample)."""
    pixels = images.to(components.device) * 2 - 1
    if components.vae is None:
        return F.pixel_unshuffle(pixels, PIXEL_FOLD)
    vae = components.vae
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    return posterior.sample(generator=generator) * components.latent_scale


def decode_latents(components: SDComponents, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images [B, 3, H, W] in [0, 1] (clamped)."""
    if components.vae is None:
        pixels = F.pixel_shuffle(latents, PIXEL_FOLD)
    else:
        vae = components.vae
        pixels = vae.decode((latents / components.latent_scale).to(vae.dtype)).sample
    return ((pixels.float() + 1) / 2).clamp(0, 1)


def latent_shape(components: SDComponents, height: int, width: int) -> tuple[int, int, int]:
    """(channels, h, w) of the latent for an image of height x width pixels."""
    if components.vae is None:
        return 3 * PIXEL_FOLD**2, height // PIXEL_FOLD, width // PIXEL_FOLD
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    return components.vae.config.latent_channels, height // factor, width // factor
