"""Turning pictures into the pixel tensors CLIP and DINO expect, written out step by step.

The steps are those of transformers' (PIL) CLIP and ViT image processors, with the constants
read from the model's `preprocessor_config.json` when it has one: quantise to 8 bits (what a
saved PNG holds), resize with PIL (shortest edge, or to a fixed height x width), centre-crop,
scale to [0, 1], subtract the mean and divide by the standard deviation per channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..images import tensor_to_pil

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR, BICUBIC = 2, 3  # PIL's resampling codes, as processor configs store them
Images = Union[Tensor, Sequence[Tensor]]  # [B, 3, H, W], or B pictures [3, H, W] of any sizes


@dataclass(frozen=True)
class ImageProcessing:
    """How pictures become model inputs."""

    resize_shortest_edge: int | None  # resize so the shorter side has this length (CLIP), or None
    resize_to: tuple[int, int] | None  # or resize to exactly (height, width) (ViT / DINO), or None
    crop: tuple[int, int] | None  # centre crop (height, width) after resizing, or None
    resample: int  # PIL resampling code: 2 bilinear, 3 bicubic
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255

    @staticmethod
    def clip_default(image_size: int) -> "ImageProcessing":
        """OpenAI CLIP's: shorter side to `image_size` (bicubic), centre crop, CLIP mean/std."""
        return ImageProcessing(image_size, None, (image_size, image_size), BICUBIC, CLIP_MEAN, CLIP_STD)

    @staticmethod
    def dino_default(image_size: int) -> "ImageProcessing":
        """facebook/dino-vits16's processor: resize to image_size x image_size (bilinear), ImageNet mean/std."""
        return ImageProcessing(None, (image_size, image_size), None, BILINEAR, IMAGENET_MEAN, IMAGENET_STD)

    @staticmethod
    def from_config(config: dict[str, Any], fallback: "ImageProcessing") -> "ImageProcessing":
        """The constants of a transformers `preprocessor_config.json`; missing ones from `fallback`."""
        shortest, resize_to = fallback.resize_shortest_edge, fallback.resize_to
        if config.get("do_resize") is False:
            shortest = resize_to = None
        elif "size" in config:
            shortest, resize_to = _size_setting(config["size"], by_shortest_edge=bool(fallback.resize_shortest_edge))
        crop = fallback.crop
        if config.get("do_center_crop") is False:
            crop = None
        elif config.get("do_center_crop") or "crop_size" in config:
            crop = _pair(config.get("crop_size", crop))
        mean = tuple(config.get("image_mean", fallback.mean)) if config.get("do_normalize", True) else (0.0,) * 3
        std = tuple(config.get("image_std", fallback.std)) if config.get("do_normalize", True) else (1.0,) * 3
        factor = float(config.get("rescale_factor", fallback.rescale_factor)) if config.get("do_rescale", True) else 1.0
        return ImageProcessing(shortest, resize_to, crop, int(config.get("resample", fallback.resample)),
                               _triple(mean), _triple(std), factor)

    def __call__(self, images: Images) -> Tensor:
        """[B, 3, H, W] in [0, 1] (or B tensors [3, H, W] of any sizes) -> [B, 3, h, w] float32
        pixel values (on the CPU)."""
        return torch.stack([self.one(picture) for picture in to_8bit_pictures(images)])

    def one(self, picture: Image.Image) -> Tensor:
        picture = picture.convert("RGB")
        if self.resize_shortest_edge:
            picture = picture.resize(_shortest_edge_size(picture.size, self.resize_shortest_edge), self.resample)
        elif self.resize_to:
            picture = picture.resize((self.resize_to[1], self.resize_to[0]), self.resample)
        array = np.asarray(picture, dtype=np.float32)  # [H, W, 3], 0..255
        if self.crop:
            array = centre_crop(array, *self.crop)
        array = array * np.float32(self.rescale_factor)
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def describe(self) -> str:
        size = (f"shorter side {self.resize_shortest_edge}" if self.resize_shortest_edge
                else f"{self.resize_to[0]}x{self.resize_to[1]}" if self.resize_to else "no resize")
        crop = f", centre crop {self.crop[0]}x{self.crop[1]}" if self.crop else ""
        return f"{size} ({'bicubic' if self.resample == BICUBIC else f'PIL resample {self.resample}'}){crop}"


def to_8bit_pictures(images: Images) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] (or B tensors [3, H, W]) -> RGB PIL pictures, rounded to 8 bits as
    Save Image writes them."""
    check_images(images)
    return [tensor_to_pil(image) for image in images]


def check_images(images: Images) -> None:
    """ValueError unless `images` is [B, 3, H, W] or a sequence of [3, H, W] tensors."""
    items = list(images) if not isinstance(images, Tensor) else images
    good = isinstance(images, Tensor) and images.ndim == 4 and images.shape[1] == 3
    good = good or (not isinstance(images, Tensor) and all(isinstance(i, Tensor) and i.ndim == 3 and i.shape[0] == 3
                                                           for i in items))
    if not good:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [B, 3, H, W] in [0, 1] (or a list of [3, H, W]), got {shape}")


def centre_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> the central [height, width] window (zero-padded where the picture is smaller)."""
    rows, cols = array.shape[:2]
    if rows < height or cols < width:
        padded = np.zeros((max(rows, height), max(cols, width), array.shape[2]), dtype=array.dtype)
        top, left = (padded.shape[0] - rows) // 2, (padded.shape[1] - cols) // 2
        padded[top : top + rows, left : left + cols] = array
        array, rows, cols = padded, *padded.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    return array[top : top + height, left : left + width]


def read_processor_config(folder: Path) -> dict[str, Any] | None:
    """`preprocessor_config.json` of a model folder, or None when there is none."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}; fix or delete it (the model's defaults are used without it)")


def _shortest_edge_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """(width, height) with the shorter side `edge` and the longer one int(edge * long / short)."""
    width, height = size
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def _size_setting(size: Any, by_shortest_edge: bool) -> tuple[int | None, tuple[int, int] | None]:
    """(shortest edge, None) or (None, (height, width)); a bare number means the shorter side for
    CLIP's processor and a square for ViT's, as transformers reads old configs."""
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), None
    if isinstance(size, (int, float)) and by_shortest_edge:
        return int(size), None
    return None, _pair(size)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, (int, float)):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"cannot read the image size {size!r} of a preprocessor config; "
                     "expected a number, {'height': h, 'width': w} or {'shortest_edge': n}")


def _triple(values: Any) -> tuple[float, float, float]:
    values = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else [values] * 3))
    if len(values) != 3:
        raise ValueError(f"image mean/std must have 3 values (RGB), got {values}")
    return values
