"""The embedded demo world: small captioned pictures of coloured shapes, drawn with numpy.

Every image is 32x32 RGB, 1-3 identical objects (a shape in a colour) on a plain
background, captioned like "two red circles on a black background". Colours are exact
palette values and objects never touch (at least one background pixel between them), so
`checker.py` can read every attribute back exactly.

Of the 108 captions (3 counts x 4 colours x 3 shapes x 3 backgrounds), the 36 with a
held-out (colour, shape) pair are never used in pretraining: they test compositional
generalisation, and give RL something to improve ("blue triangles" are unseen).

Images are float32 arrays [3, H, W] in [0, 1]; batches are [B, 3, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

IMAGE_SIZE = 32  # pixels per side

COUNT_WORDS = ("one", "two", "three")  # index + 1 objects
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("white", "black", "gray")

# Exact RGB values (0..255) of every colour that may appear in a world image. The subject's
# two colours (see subject.py) are part of the palette so the checker can tell them apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "pink": (240, 0, 200),
    "cyan": (0, 210, 210),
}

# (colour, shape) pairs whose 36 captions are held out of pretraining.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("blue", "triangle"),
    ("red", "square"),
    ("green", "circle"),
    ("yellow", "triangle"),
)


@dataclass(frozen=True)
class Scene:
    """What a caption asks for: `count` objects of one colour and shape on a background."""

    count: int  # 1..3 objects
    colour: str  # one of COLOURS
    shape: str  # one of SHAPES
    background: str  # one of BACKGROUNDS

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT_PAIRS

    def objects_phrase(self) -> str:
        """"two red circles" (no background)."""
        plural = "s" if self.count > 1 else ""
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {self.shape}{plural}"

    def caption(self) -> str:
        return f"{self.objects_phrase()} on {background_phrase(self.background)}"


@dataclass(frozen=True)
class DrawConfig:
    """Sizes and spacing of drawn objects, in pixels."""

    min_size: int = 8  # smallest side of an object's bounding box
    max_size: int = 11  # largest side
    gap: int = 1  # background pixels at least between two objects' boxes
    margin: int = 1  # background pixels at least between an object and the border
    max_tries: int = 200  # placement attempts before starting the layout over


def background_phrase(background: str) -> str:
    return f"a {background} background"


def all_scenes() -> list[Scene]:
    """All 108 scenes in a fixed order."""
    return [Scene(n, c, s, b) for n, c, s, b in product((1, 2, 3), COLOURS, SHAPES, BACKGROUNDS)]


def scenes(split: str) -> list[Scene]:
    """Scenes of a split: "train" (72 held-in), "heldout" (36) or "all" (108)."""
    if split == "all":
        return all_scenes()
    if split == "train":
        return [s for s in all_scenes() if not s.held_out]
    if split == "heldout":
        return [s for s in all_scenes() if s.held_out]
    raise ValueError(f"unknown split {split!r}; expected 'train', 'heldout' or 'all'")


def captions(split: str) -> list[str]:
    return [s.caption() for s in scenes(split)]


def parse_caption(caption: str) -> Scene:
    """The Scene of a world caption; ValueError for anything else."""
    words = caption.strip().lower().split()
    if len(words) != 7 or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"not a world caption: {caption!r} (expected e.g. 'two red circles on a black background')")
    count_word, colour, shape_word, _, _, background, _ = words
    count = COUNT_WORDS.index(count_word) + 1 if count_word in COUNT_WORDS else 0
    shape = shape_word[:-1] if count > 1 and shape_word.endswith("s") else shape_word
    if not count or colour not in COLOURS or shape not in SHAPES or background not in BACKGROUNDS:
        raise ValueError(f"not a world caption: {caption!r}")
    scene = Scene(count, colour, shape, background)
    if scene.caption() != " ".join(words):
        raise ValueError(f"not a world caption: {caption!r} (did you mean {scene.caption()!r}?)")
    return scene


# ---- drawing ---------------------------------------------------------------------------


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape filling its box."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        r = size / 2
        return (ys - r) ** 2 + (xs - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base along the bottom row
        half_width = xs - size / 2
        return np.abs(half_width) <= ys / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def place_boxes(sizes: list[int], rng: np.random.Generator, config: DrawConfig = DrawConfig()) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of square boxes that keep `gap` pixels apart."""
    limit = IMAGE_SIZE - config.margin
    for _ in range(100):
        boxes: list[tuple[int, int, int]] = []
        for size in sizes:
            for _ in range(config.max_tries):
                y, x = (int(v) for v in rng.integers(config.margin, limit - size + 1, size=2))
                if all(_apart((y, x, size), other, config.gap) for other in boxes):
                    boxes.append((y, x, size))
                    break
            else:
                break
        if len(boxes) == len(sizes):
            return [(y, x) for y, x, _ in boxes]
    raise RuntimeError(f"could not place objects of sizes {sizes} without overlap")


def _apart(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    (ay, ax, asz), (by, bx, bsz) = a, b
    return ay + asz + gap <= by or by + bsz + gap <= ay or ax + asz + gap <= bx or bx + bsz + gap <= ax


def blank(background: str) -> np.ndarray:
    """A [3, H, W] float image of one palette colour."""
    return np.broadcast_to(rgb(background)[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE)).copy()


def paint(image: np.ndarray, mask: np.ndarray, top_left: tuple[int, int], colour: np.ndarray) -> None:
    """Paints `colour` ([3] floats, or [3, h, w]) where `mask` is set, in place."""
    y, x = top_left
    h, w = mask.shape
    region = image[:, y : y + h, x : x + w]
    region[:, mask] = colour[:, mask] if colour.ndim == 3 else colour[:, None]


def draw_scene(scene: Scene, rng: np.random.Generator, config: DrawConfig = DrawConfig()) -> np.ndarray:
    """One image [3, 32, 32] in [0, 1] showing `scene`, with random sizes and placement."""
    image = blank(scene.background)
    sizes = [int(s) for s in rng.integers(config.min_size, config.max_size + 1, size=scene.count)]
    for size, corner in zip(sizes, place_boxes(sizes, rng, config)):
        paint(image, shape_mask(scene.shape, size), corner, rgb(scene.colour))
    return image


def rgb(name: str) -> np.ndarray:
    if name not in PALETTE:
        raise ValueError(f"unknown colour {name!r}; expected one of {tuple(PALETTE)}")
    return np.asarray(PALETTE[name], dtype=np.float32) / 255.0


def sample_batch(
    batch_size: int, rng: np.random.Generator, split: str = "train", config: DrawConfig = DrawConfig()
) -> tuple[np.ndarray, list[str]]:
    """(images [B, 3, 32, 32] float32, captions) with scenes drawn uniformly from `split`."""
    pool = scenes(split)
    picks = rng.integers(0, len(pool), size=batch_size)
    images = np.stack([draw_scene(pool[i], rng, config) for i in picks])
    return images, [pool[i].caption() for i in picks]


def render_dataset(split: str, per_caption: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`per_caption` images of every caption of `split`, in caption order (deterministic)."""
    rng = np.random.default_rng(seed)
    pool = scenes(split)
    images = [draw_scene(scene, rng) for scene in pool for _ in range(per_caption)]
    return np.stack(images), [scene.caption() for scene in pool for _ in range(per_caption)]
