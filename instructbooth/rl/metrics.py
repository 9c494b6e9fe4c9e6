"""Per-epoch RL metrics: reward statistics per prompt group, a JSON file and a reward curve.

One metrics entry per epoch looks like

    {"epoch": 3, "samples": 16,
     "reward": {"all": {"mean": .., "std": .., "count": ..}, "identifier": {..}, "plain": {..}, "heldout": {..}},
     "loss": .., "clip_fraction": .., "approx_kl": .., "kl_penalty": .., "subject_measure": ..,
     "time": {"sample": s, "reward": s, "train": s, "eval": s, "total": s}}

The reward curve is drawn with PIL alone (no plotting library).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_write, write_json

SUBJECT_SERIES = "subject measure"  # the subject guard's measure, drawn beside the rewards when logged
CURVE_COLOURS = {  # group -> RGB
    "all": (40, 40, 40),
    "identifier": (214, 39, 40),
    "plain": (31, 119, 180),
    "heldout": (44, 160, 44),
    SUBJECT_SERIES: (148, 103, 189),
}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, std (population) and count of a list of numbers."""
    data = torch.tensor(list(values), dtype=torch.float64)
    if data.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "count": 0}
    return {"mean": data.mean().item(), "std": data.std(unbiased=False).item(), "count": int(data.numel())}


def group_stats(rewards: torch.Tensor, groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Reward statistics over all samples and per group name, in first-seen group order."""
    values = rewards.double().tolist()
    stats = {"all": summarize(values)}
    for group in dict.fromkeys(groups):
        stats[group] = summarize([v for v, g in zip(values, groups) if g == group])
    return stats


def mean_of(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def write_metrics(folder: str | Path, history: list[dict]) -> tuple[Path, Path]:
    """`folder/metrics.json` and `folder/reward_curve.png`, both written atomically."""
    folder = Path(folder)
    json_path = write_json(folder / "metrics.json", {"epochs": history})
    png_path = folder / "reward_curve.png"
    image = draw_reward_curve(history)
    atomic_write(png_path, lambda tmp: image.save(tmp, format="PNG"))
    return json_path, png_path


def clear_metrics(folder: str | Path) -> None:
    """Removes `write_metrics`' files from `folder` (a run starting over must not show the old curve)."""
    for name in ("metrics.json", "reward_curve.png"):
        (Path(folder) / name).unlink(missing_ok=True)


def reward_series(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """group -> [(epoch, mean reward)] for every group in the history, and the subject measure
    of identifier samples (`SUBJECT_SERIES`) in the epochs that logged one."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for group, stats in entry.get("reward", {}).items():
            if stats.get("count") and math.isfinite(stats["mean"]):
                series.setdefault(group, []).append((int(entry["epoch"]), float(stats["mean"])))
        measure = entry.get("subject_measure")
        if measure is not None and math.isfinite(measure):
            series.setdefault(SUBJECT_SERIES, []).append((int(entry["epoch"]), float(measure)))
    return series


def draw_reward_curve(history: list[dict], size: tuple[int, int] = (720, 420)) -> Image.Image:
    """Mean reward per epoch, one line per prompt group, with axes and a legend."""
    width, height = size
    left, right, top, bottom = 70, 20, 30, 45
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    title = "mean reward per epoch" + (" (and subject measure)" if any("subject_measure" in e and e["subject_measure"]
                                                                         is not None for e in history) else "")
    draw.text((left, 8), title, fill="black", font=font)
    series = reward_series(history)
    points = [p for line in series.values() for p in line]
    if not points:
        draw.text((left, height // 2), "no rewards yet", fill="gray", font=font)
        return image
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = 0.05 * (y_hi - y_lo) or 0.05 * max(abs(y_hi), 1e-3)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_span = max(x_hi - x_lo, 1)

    def at(epoch: float, value: float) -> tuple[float, float]:
        x = left + (epoch - x_lo) / x_span * (width - left - right)
        y = top + (y_hi - value) / (y_hi - y_lo) * (height - top - bottom)
        return x, y

    _axes(draw, font, at, (x_lo, x_hi), (y_lo, y_hi), size, (left, right, top, bottom))
    for row, (group, line) in enumerate(series.items()):
        colour = CURVE_COLOURS.get(group, (120, 120, 120))
        xy = [at(e, v) for e, v in line]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour)
        draw.line((left + 10, top + 8 + 14 * row, left + 30, top + 8 + 14 * row), fill=colour, width=2)
        draw.text((left + 35, top + 2 + 14 * row), group, fill=colour, font=font)
    return image


def _axes(draw, font, at, x_range, y_range, size, margins) -> None:
    width, height = size
    left, right, top, bottom = margins
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for i in range(5):
        value = y_range[0] + (y_range[1] - y_range[0]) * i / 4
        _, y = at(x_range[0], value)
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((4, y - 6), f"{value:.4g}", fill="black", font=font)
    ticks = sorted({round(x_range[0] + (x_range[1] - x_range[0]) * i / 5) for i in range(6)})
    for epoch in ticks:
        x, _ = at(epoch, y_range[0])
        draw.line((x, height - bottom, x, height - bottom + 4), fill="black")
        draw.text((x - 4, height - bottom + 6), str(epoch), fill="black", font=font)
    draw.text((width // 2 - 15, height - 16), "epoch", fill="black", font=font)
