"""Generic toys: the class prior of "toy" that the demo model learns in pretraining.

SD1.5 knows what "a plushie" looks like before anyone personalizes a plushie; the demo
model should know "a toy" the same way, so that it can already draw *a* toy next to two
red circles, and DreamBooth only has to bind "sks toy" to one particular toy. A generic
toy is a pink and/or cyan object of a world shape (circle, square, triangle) in one of
five patterns (solid pink, solid cyan, rows, columns, checks). The subject itself, a
diamond with diagonal stripes 3 pixels wide, is never drawn here: no toy is a diamond and
no pattern runs along the diagonals, so its subject fidelity stays at 0 (tested).

Captions follow the demo's "after" layout: "two red circles on a black background next to
a toy" and "on a gray background next to a toy" (the toy alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import CLASS_NOUN
from .world import (
    BACKGROUNDS, SHAPES, DrawConfig, Scene, background_phrase, blank, paint, place_boxes, rgb, scenes, shape_mask,
)

TOY_PATTERNS = ("pink", "cyan", "rows", "columns", "checks")  # never diagonal stripes (the subject's)
TOY_PHRASE = f"next to a {CLASS_NOUN}"


@dataclass(frozen=True)
class ToyConfig:
    """How generic toys are drawn and how often a scene gets one."""

    min_size: int = 10  # smallest side of a toy's box (the subject is 12-14)
    max_size: int = 14  # largest side
    stripe: int = 2  # rows / columns / checks cell size, pixels (the subject's stripes are 3 wide, diagonal)
    alone_share: float = 0.25  # share of toy images with the toy alone on a background (as the subject photos)


def toy_pixels(pattern: str, size: int, stripe: int) -> np.ndarray:
    """[3, size, size] colours of a toy pattern."""
    ys, xs = np.mgrid[0:size, 0:size]
    cells = {"pink": np.zeros_like(ys), "cyan": np.ones_like(ys), "rows": (ys // stripe) % 2,
             "columns": (xs // stripe) % 2, "checks": (ys // stripe + xs // stripe) % 2}
    if pattern not in cells:
        raise ValueError(f"unknown toy pattern {pattern!r}; expected one of {TOY_PATTERNS}")
    pink, cyan = rgb("pink"), rgb("cyan")
    return np.where(cells[pattern][None] == 0, pink[:, None, None], cyan[:, None, None]).astype(np.float32)


def toy_caption(scene: Scene | None, background: str) -> str:
    """"two red circles on a black background next to a toy" or "on a gray background next to a toy"."""
    head = scene.caption() if scene is not None else f"on {background_phrase(background)}"
    return f"{head} {TOY_PHRASE}"


def draw_toy_scene(scene: Scene | None, background: str, rng: np.random.Generator,
                   toy: ToyConfig = ToyConfig(), config: DrawConfig = DrawConfig()) -> np.ndarray:
    """A toy (random shape and pattern) next to the scene's objects (or alone), [3, 32, 32]."""
    image = blank(background)
    count = scene.count if scene is not None else 0
    sizes = [int(rng.integers(toy.min_size, toy.max_size + 1))]
    sizes += [int(s) for s in rng.integers(config.min_size, config.max_size + 1, size=count)]
    corners = place_boxes(sizes, rng, config)
    shape, pattern = SHAPES[rng.integers(len(SHAPES))], TOY_PATTERNS[rng.integers(len(TOY_PATTERNS))]
    paint(image, shape_mask(shape, sizes[0]), corners[0], toy_pixels(pattern, sizes[0], toy.stripe))
    for size, corner in zip(sizes[1:], corners[1:]):
        paint(image, shape_mask(scene.shape, size), corner, rgb(scene.colour))
    return image


def sample_toy_batch(batch_size: int, rng: np.random.Generator, split: str = "train",
                     toy: ToyConfig = ToyConfig()) -> tuple[np.ndarray, list[str]]:
    """(images [B, 3, 32, 32], captions) of toys next to scenes of `split` or alone."""
    pool = scenes(split)
    images, captions = [], []
    for _ in range(batch_size):
        scene = None if rng.random() < toy.alone_share else pool[rng.integers(len(pool))]
        background = scene.background if scene is not None else BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        images.append(draw_toy_scene(scene, background, rng, toy))
        captions.append(toy_caption(scene, background))
    return np.stack(images), captions
