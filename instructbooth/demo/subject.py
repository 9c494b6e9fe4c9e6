"""The personalization subject: a diamond with diagonal pink and cyan stripes.

The base model never sees it (nor the colours pink and cyan, nor the words "sks" and
"toy"). `reference_images` are the few photos a user would bring; `draw_prompt` renders
a ground-truth image of any demo prompt (subject and/or world objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import PromptSpec, parse_prompt, personalization_prompts
from .world import BACKGROUNDS, DrawConfig, blank, paint, place_boxes, rgb, shape_mask


@dataclass(frozen=True)
class SubjectLook:
    """How the subject is drawn, in pixels."""

    min_size: int = 12  # smallest side of its bounding box
    max_size: int = 14  # largest side
    stripe_width: int = 3  # width of each stripe along the x + y diagonal
    colours: tuple[str, str] = ("pink", "cyan")  # alternating stripe colours


LOOK = SubjectLook()


def subject_mask(size: int) -> np.ndarray:
    """Boolean [size, size] diamond (|dx| + |dy| <= size / 2)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    r = size / 2
    return np.abs(ys - r) + np.abs(xs - r) <= r


def subject_pixels(size: int, look: SubjectLook = LOOK) -> np.ndarray:
    """[3, size, size] colours of the striped pattern (outside the diamond too)."""
    ys, xs = np.mgrid[0:size, 0:size]
    stripe = ((ys + xs) // look.stripe_width) % 2
    first, second = (rgb(c) for c in look.colours)
    return np.where(stripe[None] == 0, first[:, None, None], second[:, None, None]).astype(np.float32)


def draw_prompt(
    spec: PromptSpec | str, rng: np.random.Generator, config: DrawConfig = DrawConfig(), look: SubjectLook = LOOK
) -> np.ndarray:
    """A ground-truth image [3, 32, 32] for a prompt: its objects, and the subject if named."""
    spec = parse_prompt(spec) if isinstance(spec, str) else spec
    image = blank(spec.background)
    sizes = [int(s) for s in rng.integers(config.min_size, config.max_size + 1, size=spec.count)]
    if spec.subject:
        sizes.insert(0, int(rng.integers(look.min_size, look.max_size + 1)))
    corners = place_boxes(sizes, rng, config)
    if spec.subject:
        paint(image, subject_mask(sizes[0]), corners[0], subject_pixels(sizes[0], look))
        sizes, corners = sizes[1:], corners[1:]
    for size, corner in zip(sizes, corners):
        paint(image, shape_mask(spec.shape, size), corner, rgb(spec.colour))
    return image


def reference_images(count: int = 6, seed: int = 0, detailed: bool = False) -> tuple[np.ndarray, list[str]]:
    """The subject's reference set: `count` images [N, 3, 32, 32] cycling through the
    backgrounds with random placement and size, and their captions ("sks toy on a ...")."""
    rng = np.random.default_rng(seed)
    prompts = personalization_prompts(detailed)
    captions = [prompts[i % len(BACKGROUNDS)] for i in range(count)]
    return np.stack([draw_prompt(c, rng) for c in captions]), captions
