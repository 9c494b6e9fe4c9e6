"""Binary human feedback on generated images, kept in a plain folder (Lee et al. 2023's data).

Layout (what `write_feedback` makes and `read_feedback` reads):

    feedback/
      good/  0001.png  0001.txt      <- the image and, beside it, the prompt it was made from
      bad/   0002.png  0002.txt

The folder an image lies in is its label; the `.txt` of the same stem holds its prompt (UTF-8,
one prompt, surrounding whitespace ignored). Any tool can add to it: drop a picture and its
prompt into `good/` or `bad/`. Images are `.png`, `.jpg`, `.jpeg` or `.webp`; names are
numbered across both folders, so moving a file from `bad/` to `good/` relabels it. Saving an
image that is already there (the same pixels and prompt, e.g. a re-queued batch whose labels
changed) does not add a copy: it stays, or moves to its new label's folder.

Labels typed by a person (`parse_labels`): one character per image, `g`/`1`/`y`/`+` good,
`b`/`0`/`n` bad, `s`/`x`/`_`/`?` skip (not saved); spaces, commas and case are ignored:
"gbbg", "g b b g", "1,0,0,1".
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .files import atomic_write, write_text

GOOD, BAD = "good", "bad"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_GOOD_MARKS, _BAD_MARKS, _SKIP_MARKS = set("g1y+"), set("b0n"), set("sx_?")
_NUMBERED = re.compile(r"^(\d+)$")


class FeedbackError(ValueError):
    """A feedback folder or label string that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class FeedbackItem:
    image: Path  # the picture
    prompt: str  # the prompt it was made from
    good: bool  # True: in good/, False: in bad/
    status: str = "new"  # write_feedback: "new", "relabelled" (moved to the other folder) or "kept" (already there)


def parse_labels(text: str, count: int) -> list[bool | None]:
    """"gbbg" -> [True, False, False, True]; None marks an image to skip. Exactly `count` marks."""
    marks = [c for c in str(text).lower() if not c.isspace() and c not in ",;|"]
    unknown = sorted({c for c in marks if c not in _GOOD_MARKS | _BAD_MARKS | _SKIP_MARKS})
    if unknown:
        raise FeedbackError(f"labels {text!r} hold {''.join(unknown)!r}; use g (good), b (bad) or s (skip), "
                            "one per image, e.g. 'gbbg'")
    if len(marks) != count:
        raise FeedbackError(f"{len(marks)} labels for {count} images; give one per image in batch order "
                            f"(g good, b bad, s skip), e.g. {'g' * min(count, 4)!r}")
    return [True if c in _GOOD_MARKS else False if c in _BAD_MARKS else None for c in marks]


def write_feedback(folder: str | os.PathLike, images: torch.Tensor | Sequence[Image.Image],
                   prompts: str | Sequence[str], labels: Sequence[bool | None]) -> list[FeedbackItem]:
    """Saves each labelled image (and its prompt beside it) into good/ or bad/; None skips one.

    images: PIL images, or a tensor in [0, 1] as [B, 3, H, W] or ComfyUI's [B, H, W, 3];
    prompts: one for all images or one per image. Returns one item per labelled image, in batch
    order; an image already saved with this prompt is not copied again (status "kept", or
    "relabelled" when it moved to the other folder)."""
    pictures = _as_pictures(images)
    texts = [prompts] * len(pictures) if isinstance(prompts, str) else list(prompts)
    if len(texts) != len(pictures) or len(labels) != len(pictures):
        raise FeedbackError(f"{len(pictures)} images, {len(texts)} prompts and {len(labels)} labels; "
                            "give one prompt (or one per image) and one label per image")
    root = Path(folder)
    number = next_number(root)
    saved = _saved_digests(root, {t.strip() for t in texts})  # every saved image of these prompts, read once
    written, claimed = [], set()  # claimed: files this call kept, moved or wrote (each matches one image)
    for picture, prompt, label in zip(pictures, texts, labels):
        if label is None:
            continue
        prompt, folder_name = prompt.strip(), GOOD if label else BAD
        key = (prompt, _pixels_digest(picture))
        copies = sorted((path for path, k in saved.items() if k == key and path not in claimed),
                        key=lambda path: (path.parent.name != folder_name, path.name))  # its label's folder first
        if copies and copies[0].parent.name == folder_name:
            item = FeedbackItem(copies[0], prompt, bool(label), "kept")
        elif copies:  # the same image under the other label: move it, keep its number
            target = root / folder_name / copies[0].name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(copies[0].with_suffix(".txt"), target.with_suffix(".txt"))
            os.replace(copies[0], target)
            saved[target] = saved.pop(copies[0])
            item = FeedbackItem(target, prompt, bool(label), "relabelled")
        else:
            target = root / folder_name / f"{number:05d}.png"
            atomic_write(target, lambda path, p=picture: p.save(path, format="PNG"))
            write_text(target.with_suffix(".txt"), prompt + "\n")
            item, number = FeedbackItem(target, prompt, bool(label)), number + 1
        claimed.add(item.image)
        written.append(item)
    return written


def _saved_digests(root: Path, prompts: set[str]) -> dict[Path, tuple[str, str]]:
    """(prompt, pixel digest) of each PNG in good/ and bad/ whose prompt is one of `prompts`
    (only those images are opened)."""
    index = {}
    for name in (GOOD, BAD):
        folder = root / name
        for text in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            image, prompt = text.with_suffix(".png"), text.read_text(encoding="utf-8").strip()
            if prompt in prompts and image.is_file():
                with Image.open(image) as existing:
                    index[image] = (prompt, _pixels_digest(existing))
    return index


def _pixels_digest(picture: Image.Image) -> str:
    rgb = picture.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def read_feedback(folder: str | os.PathLike) -> list[FeedbackItem]:
    """Every labelled image of a feedback folder, good/ first, each sorted by name.
    Raises FeedbackError for a missing folder, an image without its prompt file, or no images."""
    root = Path(folder)
    if not root.is_dir():
        raise FeedbackError(f"feedback folder {root} does not exist; it needs good/ and bad/ sub-folders "
                            "of images with a .txt prompt beside each")
    items = []
    for name, label in ((GOOD, True), (BAD, False)):
        sub = root / name
        for image in sorted(p for p in sub.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if sub.is_dir() else []:
            prompt_file = image.with_suffix(".txt")
            if not prompt_file.is_file():
                raise FeedbackError(f"{image} has no prompt beside it: write the prompt into {prompt_file.name}")
            items.append(FeedbackItem(image, prompt_file.read_text(encoding="utf-8").strip(), label))
    if not items:
        raise FeedbackError(f"no labelled images in {root}: put images with a .txt prompt beside each into "
                            f"{root / GOOD} and {root / BAD}")
    return items


def next_number(root: Path) -> int:
    """One past the highest numbered image name in good/ and bad/ (1 for a new folder)."""
    numbers = [int(m.group(1)) for name in (GOOD, BAD) if (root / name).is_dir()
               for p in (root / name).iterdir() if (m := _NUMBERED.match(p.stem))]
    return max(numbers, default=0) + 1


def load_feedback_images(items: Sequence[FeedbackItem]) -> list[Image.Image]:
    """The items' pictures as RGB PIL images (read fully, files closed)."""
    pictures = []
    for item in items:
        with Image.open(item.image) as picture:
            pictures.append(picture.convert("RGB"))
    return pictures


def _as_pictures(images: torch.Tensor | Sequence[Image.Image]) -> list[Image.Image]:
    if not isinstance(images, torch.Tensor):
        return [image.convert("RGB") for image in images]
    if images.ndim != 4 or (images.shape[1] != 3 and images.shape[-1] not in (3, 4)):
        raise FeedbackError(f"images must be [B, 3, H, W] or [B, H, W, 3] in [0, 1], got {tuple(images.shape)}")
    bhwc = images if images.shape[-1] in (3, 4) and images.shape[1] != 3 else images.permute(0, 2, 3, 1)
    array = (bhwc[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]
