"""Subject photos for personalization: loading, captions, prompts, augmentation, batches.

Images come as files, a folder, PIL images or tensors in [0, 1] (ComfyUI's IMAGE is BHWC;
BCHW and single images are accepted too). A caption may sit beside each file as a `.txt`
with the same stem. Every image ends up as a float32 [3, H, W] tensor in [0, 1], then is
resized (shorter side to the training resolution) and centre-cropped to a square.

Prompts are templates in the one grammar of prompts.py: `{id}` (the rare identifier, e.g.
"sks"), `{cls}` (the class noun, e.g. "plushie"), `{desc}` (the optional detailed description,
filled with a leading space, or nothing) and `{subject}` ("{id} {cls}"): "a photo of {id} {cls}{desc}".

`Examples` holds one part of a training batch (the subject photos, or the class images
for prior preservation); `cache_examples` encodes it once and `draw_batch` draws a step's
latents with seeded shuffles, flips and VAE posterior samples, cached or not alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .components import SDComponents
from .encoding import encode_images, encode_prompts
from .images import to_8bit
from .prompts import fill_parts, template_slots

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

ImageSource = Union[str, Path, torch.Tensor, Image.Image, Sequence[Union[str, Path, torch.Tensor, Image.Image]]]


class SubjectDataError(ValueError):
    """Subject images or prompts that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class SubjectImage:
    pixels: torch.Tensor  # [3, H, W] float32 in [0, 1], before resizing
    name: str  # file name, or "image <i>" for in-memory images
    caption: str | None = None  # the `.txt` beside the file (a prompt template), None if absent


# --- loading ---------------------------------------------------------------------------------


def load_subject_images(source: ImageSource) -> list[SubjectImage]:
    """Images from folders, files, PIL images or tensors; raises SubjectDataError if none."""
    items = [source] if isinstance(source, (str, Path, torch.Tensor, Image.Image)) else list(source)
    images: list[SubjectImage] = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            files = _image_files(Path(item))
            if not files:
                raise SubjectDataError(f"no subject images in folder {item} (looked for {', '.join(IMAGE_SUFFIXES)})")
            images += [load_image_file(path) for path in files]
        else:
            images += _load_item(item, first=len(images))
    if not images:
        raise SubjectDataError("no subject images were given; pass at least one photo of the subject (3-10 is typical)")
    return images


def _image_files(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_item(item: str | Path | torch.Tensor | Image.Image, first: int) -> list[SubjectImage]:
    """The images of one item; in-memory ones are named "image <n>" counting from `first`."""
    if isinstance(item, torch.Tensor):
        return [SubjectImage(img, f"image {first + j}") for j, img in enumerate(tensor_to_bchw(item))]
    if isinstance(item, Image.Image):
        return [SubjectImage(pil_to_tensor(item), f"image {first}")]
    return [load_image_file(Path(item))]


def load_image_file(path: Path) -> SubjectImage:
    """One image file (EXIF rotation applied) and the caption beside it."""
    if not path.is_file():
        raise SubjectDataError(f"subject image {path} does not exist")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Exception as error:
        raise SubjectDataError(f"cannot read subject image {path}: {error}. Replace or remove the file.") from error
    return SubjectImage(pil_to_tensor(image), path.name, read_caption(path))


def read_caption(image_path: Path) -> str | None:
    """The text of `<stem>.txt` beside the image, stripped; None if missing or empty."""
    caption_path = image_path.with_suffix(".txt")
    if not caption_path.is_file():
        return None
    text = caption_path.read_text(encoding="utf-8").strip()
    return text or None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> [3, H, W] float32 in [0, 1]; transparency is composited on white; 16-bit,
    32-bit and float pictures are scaled to 8 bits as ImageReward reads them (`images.to_8bit`)."""
    rgba = np.asarray(to_8bit(image).convert("RGBA"), dtype=np.float32) / 255.0
    return _over_white(torch.from_numpy(rgba).permute(2, 0, 1).contiguous())


def tensor_to_bchw(tensor: torch.Tensor) -> torch.Tensor:
    """Images as BHWC (ComfyUI), BCHW, HWC or CHW with 1, 3 or 4 channels -> [B, 3, H, W] float32."""
    images = tensor.detach().to("cpu")
    images = images[None] if images.dim() == 3 else images
    if images.dim() != 4:
        raise SubjectDataError(f"image tensors must have 3 or 4 dimensions (BHWC), got shape {tuple(tensor.shape)}")
    if images.shape[-1] in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] not in (1, 3, 4):
        raise SubjectDataError(f"cannot tell the channel axis of image tensor {tuple(tensor.shape)}; use BHWC")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if not torch.isfinite(images).all() or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise SubjectDataError("image tensors must hold finite values in [0, 1] (ComfyUI IMAGE convention)")
    images = images.clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return torch.stack([_over_white(img) if img.shape[0] == 4 else img for img in images]).contiguous()


def _over_white(rgba: torch.Tensor) -> torch.Tensor:
    rgb, alpha = rgba[:3], rgba[3:4]
    return rgb * alpha + (1 - alpha)


# --- resizing --------------------------------------------------------------------------------


def fit_square(
    image: SubjectImage, resolution: int, min_side_fraction: float = 0.5, allow_upscale: bool = False
) -> torch.Tensor:
    """Resizes the shorter side to `resolution` and centre-crops -> [3, R, R] in [0, 1].

    Images up to `min_side_fraction` smaller than the resolution are upscaled quietly;
    smaller ones raise SubjectDataError unless `allow_upscale` (quality will suffer).
    """
    return fit_size(image, resolution, resolution, min_side_fraction, allow_upscale)


def fit_size(image: SubjectImage, height: int, width: int, min_side_fraction: float = 0.5,
             allow_upscale: bool = False) -> torch.Tensor:
    """Scales the image to cover `height` x `width` and centre-crops -> [3, height, width] in [0, 1]."""
    _, image_height, image_width = image.pixels.shape
    scale = max(height / image_height, width / image_width)
    if scale * min_side_fraction > 1 and not allow_upscale:
        raise SubjectDataError(
            f"subject image {image.name} is {image_width}x{image_height}, much smaller than the training resolution "
            f"{width if width == height else f'{width}x{height}'}; use larger photos, a lower resolution, or allow "
            "upscaling"
        )
    size = (max(height, round(image_height * scale)), max(width, round(image_width * scale)))
    if size == (image_height, image_width):
        return image.pixels[:, :height, :width].clamp(0, 1).contiguous()
    resized = F.interpolate(image.pixels[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return resized[:, top : top + height, left : left + width].clamp(0, 1).contiguous()


def training_photos(source: ImageSource, height: int, width: int) -> torch.Tensor:
    """The subject photos of an RL or DPO run at the training size: [P, 3, height, width] in [0, 1].

    The one preparation the CLI and the nodes share: files, a folder or an IMAGE batch of any
    size, scaled to cover and centre-cropped (upscaling allowed: a regulariser, not the subject's
    training set)."""
    return torch.stack([fit_size(image, height, width, allow_upscale=True) for image in load_subject_images(source)])


# --- prompts ---------------------------------------------------------------------------------


def fill_prompt(template: str, identifier: str, class_noun: str, description: str = "") -> str:
    """Fills the grammar's placeholders (prompts.py: `{id}`, `{cls}`, `{desc}`, `{subject}` =
    "{id} {cls}"); unknown placeholders raise SubjectDataError."""
    try:
        return fill_parts(template, identifier, class_noun, description)
    except ValueError as error:
        raise SubjectDataError(str(error)) from None


def instance_prompt(template: str, identifier: str, class_noun: str, description: str = "") -> str:
    """The instance prompt; the template must contain `{id}`, or nothing binds the subject."""
    check_identifier(identifier)
    if not template_slots(template) & {"id", "subject"}:
        raise SubjectDataError(
            f"instance prompt template {template!r} has no {{id}} (or {{subject}}); the identifier is what binds "
            'the subject, e.g. "a photo of {id} {cls}{desc}"'
        )
    return fill_prompt(template, identifier, class_noun, description)


def caption_prompt(image: SubjectImage, identifier: str, class_noun: str, description: str = "") -> str:
    """A per-image caption as a prompt; it must mention the identifier (as {id} or literally)."""
    prompt = fill_prompt(image.caption or "", identifier, class_noun, description)
    if not contains_word(prompt, identifier):
        raise SubjectDataError(
            f"caption of {image.name} ({image.caption!r}) does not mention the identifier {identifier!r}; "
            "add {id} or the identifier to it"
        )
    return prompt


def class_prompt(template: str, identifier: str, class_noun: str) -> str:
    """The prior-preservation prompt; it must not contain the identifier."""
    prompt = fill_prompt(template, identifier, class_noun)
    if contains_word(prompt, identifier):
        raise SubjectDataError(f"class prompt {prompt!r} contains the identifier {identifier!r}; describe only the class")
    return prompt


def check_identifier(identifier: str) -> None:
    if not identifier or not re.fullmatch(r"\S+", identifier):
        raise SubjectDataError(f"identifier must be one non-empty word (a rare token like 'sks'), got {identifier!r}")


def contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


# --- training batches ------------------------------------------------------------------------


@dataclass
class Examples:
    """One part of each batch (the instance photos or the class images), ready to draw from."""

    pixels: torch.Tensor  # [N, 3, R, R] in [0, 1], CPU (moved to the model's device a batch at a time)
    prompts: list[str]  # [N]
    seed: int  # seeds the per-epoch shuffles
    mean: torch.Tensor | None = None  # [V, N, C, h, w] cached posterior means; V=2 with flips (plain, flipped)
    std: torch.Tensor | None = None  # like mean
    embeddings: torch.Tensor | None = None  # [N, L, D] cached prompt embeddings (frozen text encoder)

    def rows(self, step: int, batch: int) -> torch.Tensor:
        """Rows [batch] of a step: each epoch visits every row once, in a seeded order."""
        count = len(self.prompts)
        picked = []
        for k in range(step * batch, (step + 1) * batch):
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 7919 + k // count))
            picked.append(int(order[k % count]))
        return torch.tensor(picked)


def posterior(components: SDComponents, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [B, C, h, w] of the scaled latent of images [B, 3, H, W] in [0, 1].

    The std is 0 for pixel-space models (no VAE)."""
    if components.vae is None:
        mean = encode_images(components, pixels)
        return mean, torch.zeros_like(mean)
    vae = components.vae
    dist = vae.encode((pixels * 2 - 1).to(vae.dtype)).latent_dist
    return dist.mean.float() * components.latent_scale, dist.std.float() * components.latent_scale


@torch.no_grad()
def cache_examples(examples: Examples, components: SDComponents, flip: bool, prompts: bool, chunk: int = 1) -> None:
    """Encodes the images once (both orientations when `flip`), and the prompts when `prompts`.

    Images go through the VAE `chunk` at a time (1: no more activation memory than a step)."""
    views = [examples.pixels, examples.pixels.flip(-1)] if flip else [examples.pixels]
    means, stds = [], []
    for view in views:
        parts = [posterior(components, part.to(components.device)) for part in view.split(chunk)]
        means.append(torch.cat([m for m, _ in parts]))
        stds.append(torch.cat([s for _, s in parts]))
    examples.mean, examples.std = torch.stack(means), torch.stack(stds)
    if prompts:
        unique = list(dict.fromkeys(examples.prompts))
        encoded = torch.cat([encode_prompts(components, unique[i : i + 8]) for i in range(0, len(unique), 8)])
        examples.embeddings = encoded[[unique.index(p) for p in examples.prompts]].float()


def draw_batch(
    examples: Examples, step: int, batch: int, flip: bool, components: SDComponents, generator: torch.Generator,
    text_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents [B, C, h, w], prompt embeddings [B, L, D]) for one step.

    Draws from `generator` the flips (when `flip`), then the posterior noise, in the same
    order whether or not the examples are cached, so both give the same batches.
    """
    rows = examples.rows(step, batch)
    flips = torch.rand(len(rows), generator=generator) < 0.5 if flip else torch.zeros(len(rows), dtype=torch.bool)
    device = components.device
    if examples.mean is not None:
        mean, std = examples.mean[flips.long(), rows], examples.std[flips.long(), rows]
    else:
        pixels = examples.pixels[rows]
        pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels).to(device)
        with torch.no_grad():
            mean, std = posterior(components, pixels)
    latents = mean + std * torch.randn(mean.shape, generator=generator).to(device)
    if examples.embeddings is not None:
        return latents, examples.embeddings[rows.to(device)]
    with torch.set_grad_enabled(text_grad):
        return latents, encode_prompts(components, [examples.prompts[i] for i in rows.tolist()]).float()
