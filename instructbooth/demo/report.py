"""The demo's report: report.md and report.html with the same content, and its PNG grids.

Sections: the numbers (per split, for the base model, DreamBooth and InstructBooth: the
headline subject-conditional alignment, the images with the subject and every attribute
right, alignment and subject fidelity, each with its standard error and n), what they show
(in images, in sentences made from the numbers), the subject's reference photos, a
"subject + instruction" grid of the first held-out prompts (a fixed rule) next to the evenly
spaced before/after grids, the RL reward curve, settings and time. The content is built once as a list of
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

from ..images import tensor_to_pil
from ..files import write_text
from ..rl.config import RLConfig
from .evaluate import ALONE

MODEL_NAMES = {"base": "Base model", "dreambooth": "DreamBooth", "instructbooth": "InstructBooth"}
PROMPT_KINDS = {"base": "without identifier", "dreambooth": "with identifier", "instructbooth": "with identifier"}
SPLIT_NAMES = {"train": "train", "heldout": "held-out"}
CELL_SCALE = 4  # grid cells are the 32 px images scaled up this much (nearest neighbour)


# --- grids --------------------------------------------------------------------------------------


def image_grid(rows: Sequence[tuple], headers: Sequence[str] = (), scale: int = CELL_SCALE,
               label_width: int = 110) -> Image.Image:
    """A labelled grid: one row per (label, images [3, H, W] in [0, 1]) or (label, images,
    notes), a note being a short text printed under its image; optional column headers."""
    font = ImageFont.load_default()
    columns = max(len(row[1]) for row in rows)
    cell = rows[0][1][0].shape[-1] * scale
    noted = any(len(row) > 2 for row in rows)
    gap, top, below = 4, 18 if headers else 4, 14 if noted else 0
    width = label_width + columns * (cell + gap)
    height = top + len(rows) * (cell + gap + below)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, header in enumerate(headers):
        draw.text((label_width + c * (cell + gap) + 2, 3), header, fill="black", font=font)
    for r, row in enumerate(rows):
        label, images, notes = row[0], row[1], (row[2] if len(row) > 2 else ())
        y = top + r * (cell + gap + below)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            tile = tensor_to_pil(image).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell + gap), y))
            if c < len(notes):
                draw.text((label_width + c * (cell + gap) + 2, y + cell + 1), notes[c], fill="black", font=font)
    return canvas




def showcase(evaluations: dict, split: str, count: int) -> tuple[list[int], list[str]]:
    """Evenly spaced prompt indices of a split (the same for every model) and the
    identifier prompts they stand for."""
    prompts = list(dict.fromkeys(evaluations["dreambooth"][split].prompts))
    picks = sorted({int(i) for i in np.linspace(0, len(prompts) - 1, min(count, len(prompts))).round()})
    return picks, [prompts[i] for i in picks]


def first_prompts(evaluations: dict, split: str, count: int) -> tuple[list[int], list[str]]:
    """The fixed rule of the "subject + instruction" grid: the split's first `count` prompts
    in their order (never chosen by score)."""
    prompts = list(dict.fromkeys(evaluations["dreambooth"][split].prompts))[:count]
    return list(range(len(prompts))), prompts


def cell_note(scores: dict) -> str:
    """"S 3/4": the subject is there (S) or not (-), and how many of the 4 instruction attributes hold."""
    return f"{'S' if scores['subject'] else '-'} {round(scores['alignment'] * 4)}/4"


def comparison_grid(evaluations: dict, split: str, count: int, picker=showcase,
                    models: Sequence[str] = tuple(MODEL_NAMES)) -> tuple[Image.Image, list[str]]:
    """Rows per model (base / DreamBooth / InstructBooth), columns the prompts `picker` chooses
    x their images; under each image its note (`cell_note`; the base model gets no subject)."""
    picks, prompts = picker(evaluations, split, count)
    rows, headers = [], []
    for name in models:
        evaluation = evaluations[name][split]
        unique = list(dict.fromkeys(evaluation.prompts))
        images, notes = [], []
        for number, index in enumerate(picks, start=1):
            rows_of_prompt = [i for i, p in enumerate(evaluation.prompts) if p == unique[index]]
            images += [evaluation.images[i] for i in rows_of_prompt]
            notes += [cell_note(evaluation.scores[i]) for i in rows_of_prompt]
            if name == models[0]:
                headers += [f"#{number}"] + [""] * (len(rows_of_prompt) - 1)
        rows.append((MODEL_NAMES[name], images, notes))
    return image_grid(rows, headers), prompts


# --- content --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One piece of the report: a heading, a paragraph, a list, a table or an image."""

    kind: str  # "h1", "h2", "p", "list", "table", "image"
    text: str = ""  # heading or paragraph text; image alt text
    items: tuple = ()  # list items, or table rows (the first row is the header)
    path: str = ""  # image path relative to the report


def numbers_table(models: dict, split: str) -> Block:
    """One split: per model the headline (subject-conditional alignment), the images with the
    subject and every attribute, alignment, fidelity and the images showing the subject;
    means ± standard error over the n images."""
    header = ("Model", "Prompts", "Subject-conditional alignment", "Subject + every attribute", "Alignment",
              "Subject fidelity", "Subject shown")
    rows = [header]
    for name, label in MODEL_NAMES.items():
        m = models[name][split]
        subject_asked = name != "base"
        rows.append((label, PROMPT_KINDS[name],
                     fmt_se(m, "subject_alignment") if subject_asked else "-",
                     of(m, "subject_exact") if subject_asked else "-",
                     fmt_se(m, "alignment"),
                     fmt_se(m, "fidelity") if subject_asked else "-",
                     of(m, "subject") if subject_asked else "-"))
    return Block("table", items=tuple(rows))


def fmt_se(summary: dict, name: str) -> str:
    """"0.412 ± 0.031 (n 72)": mean ± standard error over n images."""
    return f"{summary[name]:.3f} ± {summary[name + '_se']:.3f} (n {summary['images']})"


def of(summary: dict, name: str) -> str:
    """"5 of 72": how many images have a 0/1 score."""
    return f"{summary[name + '_count']} of {summary['images']}"


def fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def alone_line(models: dict) -> str:
    """How often the subject prompt alone shows the subject, per personalized model."""
    parts = [f"{MODEL_NAMES[n]} {of(models[n][ALONE], 'subject')} images" for n in ("dreambooth", "instructbooth")
             if ALONE in models.get(n, {})]
    return ("The subject prompt alone (\"on a <colour> background next to sks toy ...\", the reference photos' "
            "captions) shows the subject (fidelity at the checker's threshold) in: " + "; ".join(parts) + ".")


def findings(models: dict) -> list[str]:
    """Sentences saying what the numbers show, in images, whichever way they came out."""
    lines = [alone_line(models)] if ALONE in models.get("dreambooth", {}) else []
    for split, label in SPLIT_NAMES.items():
        base, db, ib = (models[m][split] for m in MODEL_NAMES)
        n = db["images"]
        lines.append(
            f"{label.capitalize()} prompts ({n} images per model): the subject with every instruction attribute "
            f"right in {db['subject_exact_count']} of {n} DreamBooth images and {ib['subject_exact_count']} of {n} "
            f"InstructBooth images; the subject at all in {db['subject_count']} and {ib['subject_count']}. "
            f"Subject-conditional alignment (alignment counted only where the subject is there): DreamBooth "
            f"{db['subject_alignment']:.3f}, InstructBooth {ib['subject_alignment']:.3f}, against the base model's "
            f"alignment of {base['alignment']:.3f} on the same instructions without the subject.")
        drop, gain = base["alignment"] - db["alignment"], ib["alignment"] - db["alignment"]
        lines.append(
            f"{label.capitalize()} prompts, alignment alone (with or without the subject): "
            f"{'dropped' if drop > 0 else 'did not drop'} from {base['alignment']:.3f} to {db['alignment']:.3f} with "
            f"personalization; RL {'raised it to' if gain > 0 else 'did not raise it:'} {ib['alignment']:.3f}. Subject "
            f"fidelity {db['fidelity']:.3f} after DreamBooth, {ib['fidelity']:.3f} after InstructBooth.")
    return lines


def report_blocks(metrics: dict, grids: dict[str, list[str]], reference_count: int) -> list[Block]:
    models, config, timing = metrics["models"], metrics["config"], metrics["time"]
    rl, personalize = config["rl"], config["personalize"]
    blocks = [
        Block("h1", "InstructBooth demo: personalization, overfitting, RL"),
        Block("p", "A built-in world of coloured shapes and a pretrained ~3M-parameter pixel-space diffusion model. "
                   f"The subject (a pink and cyan striped diamond, \"sks toy\") is learned from {reference_count} "
                   "photos (DreamBooth LoRA); RL (DDPO) then maximises the method's reward on prompts with and "
                   "without the identifier (InstructBooth): the exact checker scores each image against the prompt with "
                   "the identifier replaced by the class noun (\"a toy next to two red circles on a black background\": "
                   "a toy-coloured object, count, colour, shape, background), with no separate subject term."
                   + reward_note(config)),
        Block("p", "The headline is subject-conditional alignment: per image, the share of the instruction's "
                   "attributes (count, colour, shape, background) that the checker reads back, counted only where the "
                   "subject is there (subject fidelity at the checker's threshold, 0.5), else 0; averaged over "
                   "the images. \"Subject + every attribute\" counts the images with the subject and all four "
                   "attributes right. Alignment (with or without the subject) and subject fidelity (likeness of the "
                   "striped diamond, 0-1) are the secondary columns. ± is the standard error over the n images. "
                   "Held-out prompts use colour-shape pairs the model never saw in pretraining, personalization or RL."
                   + layout_note(config)),
        Block("h2", "Numbers"),
        Block("p", "Held-out prompts:"),
        numbers_table(models, "heldout"),
        Block("p", "Training prompts:"),
        numbers_table(models, "train"),
        Block("h2", "What it shows"),
        Block("list", items=tuple(findings(models))),
        Block("h2", "The subject's photos"),
        Block("image", "reference photos", path="reference.png"),
    ]
    for name, (path, prompts, text) in grids.items():
        blocks += [Block("h2", GRID_TITLES[name]),
                   Block("image", name, path=path),
                   Block("list", items=tuple(f"#{i}: {p}" for i, p in enumerate(prompts, start=1))),
                   Block("p", text)]
    blocks += [
        Block("h2", "RL reward curve"),
        Block("image", "reward curve", path="rl/reward_curve.png"),
        Block("p", "Mean reward per epoch on the epoch's prompts with the identifier, without it, and on the "
                   "held-out prompts (fixed seeds)."),
        Block("h2", "Settings and time"),
        Block("list", items=(
            f"DreamBooth: {personalize['steps']} steps, batch {personalize['batch_size']}, "
            f"learning rate {personalize['learning_rate']:g}, LoRA rank {personalize['lora_rank']}; "
            f"description \"{personalize['description']}\"" + prior_line(config),
            f"RL: {rl['method']}, {rl['epochs']} epochs of {rl['sample_batch_size'] * rl['sample_batches']} samples, "
            f"{rl['sample_steps']} sampler steps ({trained_steps(rl)} trained per sample), guidance {rl['guidance']:g}, "
            f"learning rate {rl['learning_rate']:g}, "
            f"LoRA rank {rl['lora_rank']}, identifier ratio {rl['identifier_ratio']:g}; reward: "
            + (f"subject-weighted variant ({config['subject_weight']:g} x subject)" if config.get("subject_weight")
               is not None else "the method's (class-noun prompt, no subject term)"),
            f"Evaluation: {config['evaluation']['per_prompt']} images per prompt, {config['evaluation']['steps']} "
            f"sampler steps, guidance {config['evaluation']['guidance']:g}, seed {config['seed']}",
            "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing["stages"].items())
            + f"; total {timing['total']:.0f} s",
            machine_line(metrics["machine"]),
        )),
    ]
    return blocks


def trained_steps(rl: dict) -> str:
    """"2 of the first 5": the sampler steps RL trains on per sample (RLConfig.train_timesteps)."""
    config = RLConfig.from_dict(rl)
    return f"{config.train_timesteps} of the first {config.window_steps}"


def prior_line(config: dict) -> str:
    """"; prior preservation on 72 scenes images (weight 0.1)" when the run had class images."""
    if not config.get("class_images"):
        return ""
    return (f"; prior preservation on {config['class_images']} {config['class_kind']} images "
            f"(weight {config['personalize']['prior_weight']:g})")


GRID_TITLES = {
    "subject": "Subject + instruction: the first held-out prompts",
    "heldout": "Before / after: held-out prompts (evenly spaced)",
    "train": "Before / after: train prompts (evenly spaced)",
}
GRID_NOTE = ("Under each image: S if the subject is there (fidelity at the checker's threshold), - if not, and how many "
             "of the 4 instruction attributes hold. The base model gets each instruction without the identifier.")


def reward_note(config: dict) -> str:
    if config.get("subject_weight") is None:
        return ""
    return (f" This run uses the labelled variant with a subject term: identifier samples are scored against the "
            f"identifier prompt, {config['subject_weight']:g} x subject + {1 - config['subject_weight']:g} x instruction.")


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
    """Writes reference.png, grid_subject.png (the first `count` held-out prompts: a fixed
    rule), grid_<split>.png (evenly spaced prompts), report.md and report.html into `out`."""
    image_grid([("reference", list(reference))], scale=CELL_SCALE, label_width=70).save(out / "reference.png")
    grids = {}
    grid, prompts = comparison_grid(evaluations, "heldout", count, picker=first_prompts)
    grid.save(out / "grid_subject.png")
    grids["subject"] = ("grid_subject.png", prompts, "The first held-out prompts in their order (a fixed rule, not "
                        "chosen by score). " + GRID_NOTE)
    for split in ("heldout", "train"):
        grid, prompts = comparison_grid(evaluations, split, count)
        grid.save(out / f"grid_{split}.png")
        grids[split] = (f"grid_{split}.png", prompts, GRID_NOTE)
    blocks = report_blocks(metrics, grids, len(reference))
    return write_text(out / "report.md", to_markdown(blocks)), write_text(out / "report.html", to_html(blocks))
