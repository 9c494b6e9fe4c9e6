"""Reading pictures the same way everywhere: subject photos, class images, ImageReward inputs."""

from __future__ import annotations

import numpy as np
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
