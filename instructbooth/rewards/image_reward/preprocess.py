"""Images -> the normalised 224x224 pixels ImageReward reads, three ways.

`preprocess_pil`: the reference's pipeline step by step (torchvision's Resize(224, BICUBIC),
CenterCrop(224), convert("RGB"), ToTensor, Normalize with CLIP's mean/std), done with PIL
alone: resize so the shorter side is 224 (the longer side `int(224 * long / short)`),
crop the centre (offsets rounded as Python's `round`), then RGB. Resizing happens in the
image's own mode, as in the reference: palette ("P") and bilevel ("1") images are resized
nearest-neighbour by PIL, RGBA premultiplied. 16-bit and 32-bit integer/float images
("I;16", "I", "F") are first scaled to 8-bit "L" (the reference would clip them to 255).

`preprocess_exact`: tensors in [0, 1] as the pictures a file would hold: quantised to 8 bits
the way ComfyUI's Save Image (and PIL's fromarray of `x * 255` as uint8) does, clip then
truncate, made into PIL images (1 channel "L", 3 "RGB", 4 "RGBA") and sent through
`preprocess_pil`. A tensor scores exactly what the same picture saved as a PNG scores with
the reference. Not differentiable.

`preprocess_tensor`: the same geometry on tensors in [0, 1], differentiable (torch bicubic
interpolation with antialiasing, which is PIL's filter; horizontal then vertical pass, each
clipped to [0, 1] as PIL's 8-bit passes are; then the crop). With 4 channels it resizes as
PIL resizes RGBA, premultiplied by alpha (fully transparent pixels end black), then drops
alpha. It differs from the exact path by PIL's rounding to 8 bits after each pass; the
distance, measured at full size, is in benchmarks/image_reward_paths.py and the README.

Tensor layouts: ComfyUI's IMAGE is [B, H, W, C]; torch's is [B, C, H, W]. `to_bchw`
detects which by the channel dim (1, 3 or 4 channels); 1 channel is grey (repeated to RGB),
a 4th channel is alpha and is dropped, as PIL's convert("RGB") does.
"""

from __future__ import annotations

import os
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ...images import to_8bit

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # per RGB channel, on pixels in [0, 1]
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHANNEL_COUNTS = (1, 3, 4)

Layout = Literal["auto", "BCHW", "BHWC"]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to `short_side`, as torchvision computes it."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of a centred size x size crop, as torchvision's CenterCrop rounds them."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def normalize(pixels: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> CLIP-normalised pixels."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


# --- PIL path (matches the reference) -----------------------------------------------------


def load_image(path: str | os.PathLike) -> Image.Image:
    """Opens an image file fully; a missing or unreadable file raises with the file's name."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an image ({error}); give a PNG, JPEG or WebP file") from error


def preprocess_pil(image: Image.Image, size: int = 224) -> Tensor:
    """Any PIL image -> normalised pixels [3, size, size] float32."""
    image = to_8bit(image)
    height, width = resized_size(image.height, image.width, size)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    top, left = crop_offsets(height, width, size)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return normalize(pixels.float().div(255.0)[None])[0]


def preprocess_pil_batch(images: Sequence[Image.Image], size: int = 224) -> Tensor:
    """A list of PIL images -> [B, 3, size, size]."""
    return torch.stack([preprocess_pil(image, size) for image in images])


# --- exact tensor path (the PIL path on the pictures a file would hold) ---------------------


PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def quantize_8bit(images: Tensor) -> np.ndarray:
    """Tensor in [0, 1] -> uint8 array, as ComfyUI saves images: clip(255 x, 0, 255), truncated."""
    return np.clip(images.detach().float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)


def tensor_to_pil(images: Tensor, layout: Layout = "auto") -> list[Image.Image]:
    """Images in [0, 1] ([B, C, H, W], [B, H, W, C] or one image) -> PIL images of the
    same channels (grey "L", "RGB", "RGBA"), quantised as a saved PNG would be."""
    images = channels_first(images, layout).permute(0, 2, 3, 1)
    channels = images.shape[-1]
    arrays = quantize_8bit(images)
    return [Image.fromarray(a[..., 0] if channels == 1 else a, PIL_MODES[channels]) for a in arrays]


def preprocess_exact(images: Tensor, size: int = 224, layout: Layout = "auto") -> Tensor:
    """Images in [0, 1] -> normalised pixels [B, 3, size, size], exactly as their PNG files
    would be preprocessed by the reference (on the CPU; no gradients)."""
    return preprocess_pil_batch(tensor_to_pil(images, layout), size)


# --- tensor path (differentiable) ---------------------------------------------------------


def to_bchw(images: Tensor, layout: Layout = "auto") -> Tensor:
    """[B, C, H, W], [B, H, W, C] or one unbatched image -> [B, 3, H, W] (a view where possible)."""
    return _as_rgb(channels_first(images, layout))


def channels_first(images: Tensor, layout: Layout = "auto") -> Tensor:
    """[B, C, H, W] with the image's own 1, 3 or 4 channels, from any accepted layout.

    `layout="auto"` picks the dim that holds 1, 3 or 4 channels; when both dim 1 and the last
    dim could (images 1, 3 or 4 pixels wide) it asks for an explicit layout."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W] or [B, H, W, C], got shape {tuple(images.shape)}")
    layout = _detect_layout(images.shape) if layout == "auto" else layout
    if layout == "BHWC":
        images = images.permute(0, 3, 1, 2)
    elif layout != "BCHW":
        raise ValueError(f"unknown layout {layout!r}; use 'auto', 'BCHW' or 'BHWC'")
    if images.shape[1] not in CHANNEL_COUNTS:
        raise ValueError(f"expected 1, 3 or 4 channels, got {images.shape[1]}")
    return images


def _detect_layout(shape: torch.Size) -> str:
    first, last = shape[1] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and not last:
        return "BCHW"
    if last and not first:
        return "BHWC"
    raise ValueError(
        f"cannot tell the channel dim of images with shape {tuple(shape)}: "
        f"{'both dim 1 and the last dim' if first else 'neither dim 1 nor the last dim'} "
        f"hold 1, 3 or 4 values; pass layout='BCHW' or layout='BHWC'"
    )


def _as_rgb(images: Tensor) -> Tensor:
    channels = images.shape[1]
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    if channels in (3, 4):
        return images[:, :3]
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


def preprocess_tensor(images: Tensor, size: int = 224, layout: Layout = "auto", clamp: bool = True) -> Tensor:
    """Images in [0, 1] (see `to_bchw`) -> normalised pixels [B, 3, size, size] float32.

    No detach, no PIL: gradients flow to `images` (except where `clamp` cuts overshoot).
    4 channels: resized premultiplied by alpha, as PIL resizes RGBA, then alpha is dropped."""
    pixels = _with_alpha(images, layout).float()
    height, width = resized_size(pixels.shape[-2], pixels.shape[-1], size)
    if (height, width) != tuple(pixels.shape[-2:]):
        pixels = _resize(pixels, height, width, clamp)
    elif pixels.shape[1] == 4:
        pixels = pixels[:, :3]
    top, left = crop_offsets(height, width, size)
    return normalize(pixels[:, :, top : top + size, left : left + size])


def _with_alpha(images: Tensor, layout: Layout) -> Tensor:
    """[B, 3 or 4, H, W]: RGB (grey repeated), alpha kept as a 4th channel when present."""
    pixels = channels_first(images, layout)
    return pixels if pixels.shape[1] == 4 else _as_rgb(pixels)


def _resize(pixels: Tensor, height: int, width: int, clamp: bool) -> Tensor:
    """RGB: `_resize_bicubic`. RGBA: as PIL resizes an 8-bit RGBA image: colour premultiplied by
    alpha, both resized (a horizontal then a vertical pass, each stored in 8 bits), then divided
    by the resized alpha; only the colour is kept. Near-transparent colours are divided by an
    alpha of a few levels, so the 8-bit rounding decides them: it is applied here too, with
    gradients passed straight through it."""
    if pixels.shape[1] != 4:
        return _resize_bicubic(pixels, height, width, clamp)
    alpha = pixels[:, 3:4]
    stored = _levels(torch.cat([pixels[:, :3] * alpha, alpha], 1))  # PIL's RGBa
    stored = _levels(_bicubic(stored, (stored.shape[-2], width)).clamp(0.0, 1.0))
    stored = _levels(_bicubic(stored, (height, width)).clamp(0.0, 1.0))
    colour, alpha = stored[:, :3], stored[:, 3:4]
    divided = _levels(colour / alpha.clamp_min(1 / 255), torch.floor).clamp(0.0, 1.0)  # RGBa -> RGBA truncates
    return torch.where((alpha == 0) | (alpha == 1), colour, divided)  # PIL keeps the stored colour there


def _levels(values: Tensor, rounding=torch.round) -> Tensor:
    """`values` on the 8-bit grid (rounded, or floored with a tolerance for float error); the
    gradient passes straight through."""
    scaled = values * 255 + (1e-4 if rounding is torch.floor else 0.0)
    return values + (rounding(scaled) / 255 - values).detach()


def _bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's bicubic filter: torch's antialiased bicubic interpolation."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def _resize_bicubic(pixels: Tensor, height: int, width: int, clamp: bool) -> Tensor:
    """PIL's bicubic filter (torch's antialiased bicubic). With `clamp`, like PIL on 8-bit
    images: the horizontal pass, clipped to [0, 1], then the vertical pass, clipped; without
    it, one unclipped 2-D pass."""
    if not clamp:
        return _bicubic(pixels, (height, width))
    pixels = _bicubic(pixels, (pixels.shape[-2], width)).clamp(0.0, 1.0)
    return _bicubic(pixels, (height, width)).clamp(0.0, 1.0)
