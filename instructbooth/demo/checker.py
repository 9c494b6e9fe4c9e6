"""An exact reader of demo-world images: which of a prompt's attributes hold, and the reward.

Each pixel takes the nearest palette colour. The background is the commonest colour, if
it also covers nearly all pixels away from objects (a textured background is "mixed").
Objects are found in the mask of world-colour pixels: pinholes are filled, the mask is
eroded so stray pixels and one-pixel bridges vanish, and each remaining core claims the
pixels near it (`object_groups`). An object's colour is its commonest colour (if most of
its pixels have it; else "mixed"); its shape
follows from its taper (a triangle has far fewer pixels in its top half) and, failing
that, from how much of its bounding box it fills (square ~1, circle ~0.8).
The subject (pink/cyan diagonal stripes 3 pixels wide) is read by `subject_fidelity`.
These rules close the shortcuts RL found in earlier versions: speckled backgrounds and
objects of interleaved colours no longer pass.

Scored attributes: count (exactly the prompt's number of world objects), colour and shape
(every object has them, and there is at least one), background, and for subject prompts
"subject" (fidelity >= 0.5 for "sks toy"; for "a toy", any toy-coloured object).
`AlignmentReward` turns them into the fraction that holds, the project's reward protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .prompts import PromptSpec, parse_prompt
from .world import COLOURS, PALETTE

NAMES = tuple(PALETTE)  # label index -> colour name
_RGB = np.asarray([PALETTE[n] for n in NAMES], dtype=np.float32) / 255.0  # [K, 3]
WORLD_LABELS = np.array([NAMES.index(c) for c in COLOURS])
SUBJECT_LABELS = np.array([NAMES.index(c) for c in ("pink", "cyan")])
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_ORTHOGONAL = [(-1, 0), (1, 0), (0, -1), (0, 1)]
MIXED = "mixed"  # the colour of a background or object with no dominant palette colour


@dataclass(frozen=True)
class CheckerConfig:
    """Thresholds of the checker (pixel counts and fill ratios)."""

    reach: int = 2  # an object is its eroded core plus mask pixels this close to it
    min_area: int = 12  # smallest object kept, pixels
    triangle_taper: float = 0.75  # top-half / bottom-half pixels below this: triangle
    square_fill: float = 0.885  # else bounding-box fill at or above this: square, below: circle
    subject_area: int = 50  # a subject of at least this many pixels has full coverage
    stripe_width: int = 3  # the subject's stripe width (subject.SubjectLook), pixels along x + y
    stripe_floor: float = 0.7  # stripe match at or below this scores 0 (1-pixel stripes match ~0.67)
    background_share: float = 0.9  # the background holds when this share of the pixels away from objects has its colour
    colour_share: float = 0.75  # an object has a colour when this share of its pixels has it
    subject_threshold: float = 0.5  # fidelity at which "sks toy" counts as present
    toy_area: int = 20  # a toy-coloured object of this many pixels counts as "a toy"


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    area: int  # pixels
    fill: float  # share of its (trimmed) bounding box it covers
    taper: float  # pixels in the box's top half / bottom half


@dataclass(frozen=True)
class Reading:
    """What the checker sees in one image."""

    background: str
    objects: tuple[WorldObject, ...]
    subject_fidelity: float  # 0..1
    toy_area: int  # pixels of the largest toy-coloured group


def labels(image: np.ndarray) -> np.ndarray:
    """[H, W] palette indices of the nearest palette colour to each pixel of [3, H, W]."""
    pixels = np.moveaxis(np.asarray(image, dtype=np.float32), 0, -1)  # [H, W, 3]
    distances = ((pixels[..., None, :] - _RGB) ** 2).sum(-1)  # [H, W, K]
    return distances.argmin(-1)


def _neighbour_counts(mask: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return sum(padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(int) for dy, dx in offsets)


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation."""
    return mask | (_neighbour_counts(mask, _NEIGHBOURS) > 0)


def object_groups(mask: np.ndarray, config: "CheckerConfig") -> list[np.ndarray]:
    """Objects in a mask as (y, x) arrays [N, 2], robust to noise.

    Pinholes (all 4 orthogonal neighbours set) are filled; the mask is eroded (3x3) so that
    stray pixels and one-pixel bridges between objects vanish; each 8-connected core then
    claims the mask pixels within `reach` pixels of it. Groups under `min_area` are dropped.
    """
    mask = mask | (_neighbour_counts(mask, _ORTHOGONAL) == 4)
    core = mask & (_neighbour_counts(mask, _NEIGHBOURS) == 8)
    free, groups = mask.copy(), []
    for seed in connected_groups(core):
        region = np.zeros_like(mask)
        region[seed[:, 0], seed[:, 1]] = True
        for _ in range(config.reach):
            region = dilate(region)
        members = region & free
        free &= ~members
        if members.sum() >= config.min_area:
            groups.append(np.argwhere(members))
    return groups


def connected_groups(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected groups of set pixels, each an int array [N, 2] of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    groups = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, members = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for dy, dx in _NEIGHBOURS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        groups.append(np.asarray(members))
    return groups


def shape_features(group: np.ndarray) -> tuple[float, float]:
    """(fill, taper) of a pixel group. The box spans rows and columns holding at least two
    of its pixels (so one stray pixel does not stretch it); fill is the share of the box
    covered, taper the pixels in the box's top half over those in its bottom half."""
    ys, xs = group[:, 0], group[:, 1]
    rows, row_counts = np.unique(ys, return_counts=True)
    cols, col_counts = np.unique(xs, return_counts=True)
    rows, cols = rows[row_counts >= 2], cols[col_counts >= 2]
    if not len(rows) or not len(cols):
        return 0.0, 1.0
    y0, y1, x0, x1 = rows.min(), rows.max(), cols.min(), cols.max()
    inside = (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)
    fill = inside.sum() / float((y1 - y0 + 1) * (x1 - x0 + 1))
    middle = (y0 + y1) / 2
    top, bottom = (inside & (ys < middle)).sum(), (inside & (ys > middle)).sum()
    return float(fill), float(top / max(bottom, 1))


def shape_of(fill: float, taper: float, config: "CheckerConfig") -> str:
    if taper < config.triangle_taper:
        return "triangle"
    return "square" if fill >= config.square_fill else "circle"


def read_image(image: np.ndarray | torch.Tensor, config: CheckerConfig = CheckerConfig()) -> Reading:
    """Reads background, world objects and the subject from an image [3, H, W] in [0, 1]."""
    image = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else image
    label = labels(image)
    groups = object_groups(np.isin(label, WORLD_LABELS), config)
    objects = tuple(_object(label, g, config) for g in groups)
    toy_groups = object_groups(np.isin(label, SUBJECT_LABELS), config)
    toy_area = max((len(g) for g in toy_groups), default=0)
    background = _background(label, groups + toy_groups, config)
    return Reading(background, objects, _fidelity(label, toy_groups, config), toy_area)


def _background(label: np.ndarray, groups: list[np.ndarray], config: CheckerConfig) -> str:
    """The commonest colour, if it fills `background_share` of the pixels more than one
    pixel away from every object (a speckled or textured background is MIXED)."""
    near_objects = np.zeros(label.shape, dtype=bool)
    for group in groups:
        near_objects[group[:, 0], group[:, 1]] = True
    away = label[~dilate(near_objects)]
    counts = np.bincount(label.ravel(), minlength=len(NAMES))
    colour = int(counts.argmax())
    clean = away.size > 0 and (away == colour).mean() >= config.background_share
    return NAMES[colour] if clean else MIXED


def _object(label: np.ndarray, group: np.ndarray, config: CheckerConfig) -> WorldObject:
    """An object's colour is its commonest one if `colour_share` of its pixels have it, else MIXED."""
    fill, taper = shape_features(group)
    counts = np.bincount(label[group[:, 0], group[:, 1]], minlength=len(NAMES))
    colour = NAMES[counts.argmax()] if counts.max() >= config.colour_share * len(group) else MIXED
    return WorldObject(colour, shape_of(fill, taper, config), len(group), fill, taper)


def subject_fidelity(image: np.ndarray | torch.Tensor, config: CheckerConfig = CheckerConfig()) -> float:
    """How much the image contains the subject, in [0, 1]: 1 for a striped diamond."""
    return read_image(image, config).subject_fidelity


def _fidelity(label: np.ndarray, groups: list[np.ndarray], config: CheckerConfig) -> float:
    """coverage x colour balance x stripe match of the largest pink/cyan group.

    The stripe match is the share of the group's pixels whose colour is that of the
    subject's pattern (stripes `stripe_width` wide along x + y = const) at its best phase,
    mapped from [stripe_floor, 1] to [0, 1]. Other stripe widths score low (measured on a
    drawn diamond: 1, 2, 5 or 6 pixels give 0, 4 pixels 0.2), and so do stripes the wrong
    way and colour noise."""
    if not groups:
        return 0.0
    group = max(groups, key=len)
    ys, xs = group[:, 0], group[:, 1]
    is_pink = label[ys, xs] == SUBJECT_LABELS[0]
    coverage = min(1.0, len(group) / config.subject_area)
    pink, cyan = int(is_pink.sum()), int((~is_pink).sum())
    balance = min(1.0, 2 * min(pink, cyan) / max(pink, cyan))
    stripe = float(np.clip((stripe_match(ys + xs, is_pink, config.stripe_width) - config.stripe_floor)
                           / (1.0 - config.stripe_floor), 0.0, 1.0))
    return float(coverage * balance * stripe)


def stripe_match(diagonals: np.ndarray, is_pink: np.ndarray, width: int) -> float:
    """Largest share of pixels agreeing with stripes of `width` along the diagonals, over all phases."""
    phases = np.arange(2 * width)[:, None]
    pattern = ((diagonals[None, :] + phases) // width) % 2 == 0  # [phases, N]: pink stripe
    return float((pattern == is_pink[None, :]).mean(axis=1).max())


def check(reading: Reading, spec: PromptSpec, config: CheckerConfig = CheckerConfig()) -> dict[str, bool]:
    """Which of the prompt's attributes hold, by name (spec.attributes() order)."""
    objects = reading.objects
    result = {}
    if spec.subject == "identifier":
        result["subject"] = reading.subject_fidelity >= config.subject_threshold
    elif spec.subject == "class":
        result["subject"] = reading.toy_area >= config.toy_area
    result["count"] = len(objects) == spec.count
    if spec.count:
        result["colour"] = bool(objects) and all(o.colour == spec.colour for o in objects)
        result["shape"] = bool(objects) and all(o.shape == spec.shape for o in objects)
    result["background"] = reading.background == spec.background
    return result


def score(image: np.ndarray | torch.Tensor, prompt: str | PromptSpec, config: CheckerConfig = CheckerConfig()) -> dict[str, bool]:
    """Attribute name -> holds, for one image [3, H, W] in [0, 1] and its prompt."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    return check(read_image(image, config), spec, config)


class AlignmentReward:
    """The exact alignment reward: the fraction of the prompt's attributes that hold.

    Follows the project's reward protocol: `reward(images [B, 3, H, W] in [0, 1],
    prompts, metadata) -> float32 [B]` on the images' device. `metadata` is accepted
    (one dict per image) and unused. Unparseable prompts raise ValueError.
    """

    name = "demo_alignment"

    def __init__(self, config: CheckerConfig = CheckerConfig()):
        self.config = config

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if len(prompts) != len(images) or (metadata is not None and len(metadata) != len(images)):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts / metadata entries")
        values = [self.value(score(img, p, self.config)) for img, p in zip(images, prompts)]
        return torch.tensor(values, dtype=torch.float32, device=images.device)

    def value(self, result: dict[str, bool]) -> float:
        """The reward of one image's attribute results: the share that hold."""
        return float(np.mean(list(result.values())))


def attribute_accuracy(images: torch.Tensor, prompts: list[str], config: CheckerConfig = CheckerConfig()) -> dict[str, float]:
    """Share of images whose attribute holds, per attribute, plus "all" (every attribute
    of the prompt holds) and "reward" (mean fraction). Attributes a prompt lacks are skipped."""
    tallies: dict[str, list[bool]] = {}
    for image, prompt in zip(images, prompts):
        result = score(image, prompt, config)
        for name, ok in result.items():
            tallies.setdefault(name, []).append(ok)
        tallies.setdefault("all", []).append(all(result.values()))
        tallies.setdefault("reward", []).append(float(np.mean(list(result.values()))))
    return {name: float(np.mean(values)) for name, values in tallies.items()}

