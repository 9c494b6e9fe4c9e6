"""Pictures and tensors, converted the same way everywhere.

- `to_8bit`: deep (16/32-bit, float) pictures to 8 bits, as ImageReward reads them;
- `to_uint8` / `tensor_to_pil`: a tensor image [3, H, W] in [0, 1] to 8-bit HWC / an RGB PIL
  picture, rounded as a PNG stores it (clamped, x 255, round half to even); every module that
  saves, previews or scores an image as saved goes through these.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16/32-bit integer and float pixels


def to_8bit(image: Image.Image) -> Image.Image:
    """Deep integer and float modes -> 8-bit grey, scaled by the mode's range (PIL's own
    convert would clip them to 255: a 16-bit photo became a white square); others unchanged.
    "I" images whose values fit 8 bits are taken as 8-bit values; "F" images as 0..1."""
    if image.mode not in DEEP_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I") else 1.0
    if image.mode == "I" and values.max(initial=0) <= 255:
        top = 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] (or [B, 3, H, W]) float in [0, 1] -> uint8 [H, W, 3] (or [B, H, W, 3])."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> RGB PIL picture (8 bits)."""
    return Image.fromarray(to_uint8(image))
