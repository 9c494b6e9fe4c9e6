"""The demo's report: report.md and report.html with the same content, and its PNG grids.

Sections: the numbers (alignment and subject fidelity of the base model, DreamBooth and
InstructBooth on training and held-out prompts), what they show (the overfitting and its
repair, in sentences made from the numbers), the subject's reference photos, before/after
grids, the RL reward curve, settings and time. The content is built once as a list of
blocks and rendered twice, so both files always state the same numbers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..files import write_text

MODEL_NAMES = {"base": "Base model", "dreambooth": "DreamBooth", "instructbooth": "InstructBooth"}
PROMPT_KINDS = {"base": "without identifier", "dreambooth": "with identifier", "instructbooth": "with identifier"}
SPLIT_NAMES = {"train": "train", "heldout": "held-out"}
CELL_SCALE = 4  # grid cells are the 32 px images scaled up this much (nearest neighbour)


# --- grids --------------------------------------------------------------------------------------


def image_grid(rows: Sequence[tuple[str, Sequence[torch.Tensor]]], headers: Sequence[str] = (),
               scale: int = CELL_SCALE, label_width: int = 110) -> Image.Image:
    """A labelled grid: one row per (label, images [3, H, W] in [0, 1]), optional column headers."""
    font = ImageFont.load_default()
    columns = max(len(images) for _, images in rows)
    cell = rows[0][1][0].shape[-1] * scale
    gap, top = 4, 18 if headers else 4
    width = label_width + columns * (cell + gap)
    height = top + len(rows) * (cell + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, header in enumerate(headers):
        draw.text((label_width + c * (cell + gap) + 2, 3), header, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = top + r * (cell + gap)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            tile = _to_pil(image).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell + gap), y))
    return canvas


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def showcase(evaluations: dict, split: str, count: int) -> tuple[list[int], list[str]]:
    """Evenly spaced prompt indices of a split (the same for every model) and the
    identifier prompts they stand for."""
    prompts = list(dict.fromkeys(evaluations["dreambooth"][split].prompts))
    picks = sorted({int(i) for i in np.linspace(0, len(prompts) - 1, min(count, len(prompts))).round()})
    return picks, [prompts[i] for i in picks]


def comparison_grid(evaluations: dict, split: str, count: int) -> tuple[Image.Image, list[str]]:
    """Rows base / DreamBooth / InstructBooth, columns the showcase prompts x their images."""
    picks, prompts = showcase(evaluations, split, count)
    rows, headers = [], []
    for name in MODEL_NAMES:
        evaluation = evaluations[name][split]
        unique = list(dict.fromkeys(evaluation.prompts))
        images = []
        for number, index in enumerate(picks, start=1):
            rows_of_prompt = [i for i, p in enumerate(evaluation.prompts) if p == unique[index]]
            images += [evaluation.images[i] for i in rows_of_prompt]
            if name == "base":
                headers += [f"#{number}"] + [""] * (len(rows_of_prompt) - 1)
        rows.append((MODEL_NAMES[name], images))
    return image_grid(rows, headers), prompts


# --- content --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One piece of the report: a heading, a paragraph, a list, a table or an image."""

    kind: str  # "h1", "h2", "p", "list", "table", "image"
    text: str = ""  # heading or paragraph text; image alt text
    items: tuple = ()  # list items, or table rows (the first row is the header)
    path: str = ""  # image path relative to the report


def numbers_table(models: dict) -> Block:
    header = ("Model", "Prompts", "Alignment (train)", "Alignment (held-out)", "All correct (train)",
              "All correct (held-out)", "Subject fidelity (train)", "Subject fidelity (held-out)")
    rows = [header]
    for name, label in MODEL_NAMES.items():
        split = models[name]
        rows.append((label, PROMPT_KINDS[name], *(fmt(split[s]["alignment"], split[s]["alignment_std"]) for s in SPLIT_NAMES),
                     *(f"{split[s]['exact']:.3f}" for s in SPLIT_NAMES), *(f"{split[s]['fidelity']:.3f}" for s in SPLIT_NAMES)))
    return Block("table", items=tuple(rows))


def fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def findings(models: dict) -> list[str]:
    """Sentences saying what the numbers show, whichever way they came out."""
    lines = []
    for split, label in SPLIT_NAMES.items():
        base, db, ib = (models[m][split] for m in MODEL_NAMES)
        drop = base["alignment"] - db["alignment"]
        overfit = f"dropped by {drop:.3f}" if drop > 0 else f"did not drop ({-drop:+.3f})"
        gain = ib["alignment"] - db["alignment"]
        repair = f"raised it by {gain:.3f}" if gain > 0 else f"did not raise it ({gain:+.3f})"
        kept = "kept" if ib["fidelity"] >= 0.8 * db["fidelity"] else "lost"
        lines.append(
            f"{label.capitalize()} prompts: instruction alignment {overfit} with personalization, from "
            f"{base['alignment']:.3f} (base model, instructions without the subject) to {db['alignment']:.3f} "
            f"(DreamBooth, the same instructions with the identifier); RL {repair}, to {ib['alignment']:.3f}. "
            f"Subject fidelity: {db['fidelity']:.3f} after DreamBooth, {ib['fidelity']:.3f} after InstructBooth "
            f"({kept})."
        )
    return lines


def report_blocks(metrics: dict, grids: dict[str, list[str]], reference_count: int) -> list[Block]:
    models, config, timing = metrics["models"], metrics["config"], metrics["time"]
    rl, personalize = config["rl"], config["personalize"]
    blocks = [
        Block("h1", "InstructBooth demo: personalization, overfitting, RL"),
        Block("p", "A built-in world of coloured shapes and a pretrained ~3M-parameter pixel-space diffusion model. "
                   f"The subject (a pink and cyan striped diamond, \"sks toy\") is learned from {reference_count} "
                   "photos (DreamBooth LoRA); RL (DDPO) then maximises an exact alignment reward on prompts with and "
                   "without the identifier (InstructBooth). Alignment: the share of an instruction's attributes "
                   "(count, colour, shape, background) read back from the image; all correct: every attribute holds; "
                   "subject fidelity: likeness of the striped diamond (0-1). Means over "
                   f"{models['base']['train']['images']} training and {models['base']['heldout']['images']} held-out "
                   "images; ± is the spread (std) of the per-prompt means. Held-out prompts use colour-shape pairs "
                   "the model never saw in pretraining, personalization or RL." + layout_note(config)),
        Block("h2", "Numbers"),
        numbers_table(models),
        Block("h2", "What it shows"),
        Block("list", items=tuple(findings(models))),
        Block("h2", "The subject's photos"),
        Block("image", "reference photos", path="reference.png"),
    ]
    for split, prompts in grids.items():
        blocks += [Block("h2", f"Before / after: {SPLIT_NAMES[split]} prompts"),
                   Block("image", f"{split} grid", path=f"grid_{split}.png"),
                   Block("list", items=tuple(f"#{i}: {p}" for i, p in enumerate(prompts, start=1))),
                   Block("p", "The base model gets each instruction without the identifier.")]
    blocks += [
        Block("h2", "RL reward curve"),
        Block("image", "reward curve", path="rl/reward_curve.png"),
        Block("p", "Mean reward per epoch on the epoch's prompts with the identifier, without it, and on the "
                   "held-out prompts (fixed seeds)."),
        Block("h2", "Settings and time"),
        Block("list", items=(
            f"DreamBooth: {personalize['steps']} steps, batch {personalize['batch_size']}, "
            f"learning rate {personalize['learning_rate']:g}, LoRA rank {personalize['rank']}; "
            f"description \"{personalize['description']}\"",
            f"RL: {rl['method']}, {rl['epochs']} epochs of {rl['sample_batch_size'] * rl['sample_batches']} samples, "
            f"{rl['sample_steps']} sampler steps, guidance {rl['guidance']:g}, learning rate {rl['learning_rate']:g}, "
            f"LoRA rank {rl['lora_rank']}, identifier ratio {rl['identifier_ratio']:g}"
            + (f", subject weight {config['subject_weight']:g} in the reward" if config.get("subject_weight") is not None
               else ""),
            f"Evaluation: {config['evaluation']['per_prompt']} images per prompt, {config['evaluation']['steps']} "
            f"sampler steps, guidance {config['evaluation']['guidance']:g}, seed {config['seed']}",
            "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing["stages"].items())
            + f"; total {timing['total']:.0f} s",
            machine_line(metrics["machine"]),
        )),
    ]
    return blocks


def layout_note(config: dict) -> str:
    if config.get("layout") != "after":
        return ""
    return (" Subject prompts name the subject after the scene (\"two red circles on a black background next to "
            "sks toy ...\"): the demo model reads a caption's words well only at the positions pretraining put them.")


def machine_line(machine: dict) -> str:
    load = machine.get("load_average")
    load_text = f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)" if load else ""
    return f"Machine: {machine['cpus']} CPUs, {machine['torch_threads']} torch threads{load_text}"


# --- rendering ----------------------------------------------------------------------------------


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.text}")
        elif block.kind == "h2":
            out.append(f"## {block.text}")
        elif block.kind == "p":
            out.append(block.text)
        elif block.kind == "list":
            out.append("\n".join(f"- {item}" for item in block.items))
        elif block.kind == "table":
            header, *rows = block.items
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]))
        elif block.kind == "image":
            out.append(f"![{block.text}]({block.path})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        if block.kind in ("h1", "h2", "p"):
            body.append(f"<{block.kind}>{html.escape(block.text)}</{block.kind}>")
        elif block.kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "table":
            header, *rows = block.items
            head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table>{head}{cells}</table>")
        elif block.kind == "image":
            body.append(f'<p><img src="{html.escape(block.path)}" alt="{html.escape(block.text)}"></p>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child,td:nth-child(2){text-align:left}img{image-rendering:pixelated}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>InstructBooth demo</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: Path, metrics: dict, evaluations: dict, reference: torch.Tensor, count: int) -> tuple[Path, Path]:
    """Writes reference.png, grid_<split>.png, report.md and report.html into `out`."""
    image_grid([("reference", list(reference))], scale=CELL_SCALE, label_width=70).save(out / "reference.png")
    grids = {}
    for split in SPLIT_NAMES:
        grid, prompts = comparison_grid(evaluations, split, count)
        grid.save(out / f"grid_{split}.png")
        grids[split] = prompts
    blocks = report_blocks(metrics, grids, len(reference))
    return write_text(out / "report.md", to_markdown(blocks)), write_text(out / "report.html", to_html(blocks))
