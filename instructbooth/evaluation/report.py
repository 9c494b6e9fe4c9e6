"""The evaluation report: per-prompt and overall tables per model, as JSON, Markdown and an HTML
page with the image grid. `summarize` is pure (records in, tables out); the writers are atomic."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

from ..files import write_json, write_text
from .scoring import METRIC_TITLES

CONVENTIONS = {
    "clip_t": "cosine of the CLIP image embedding and the CLIP text embedding of the prompt written without the "
              "identifier (class noun instead), in [-1, 1]; torchmetrics' CLIPScore is 100 * max(mean, 0): "
              "see clip_score_100",
    "clip_i": "mean cosine of the CLIP image embeddings of each generated image and every reference photo "
              "(pairwise mean over generated x reference)",
    "dino": "mean cosine of the DINO ViT [CLS] embeddings (last_hidden_state[:, 0]) of each generated image and "
            "every reference photo (pairwise mean over generated x reference)",
    "image_reward": "ImageReward of each image for the prompt written without the identifier",
    "images": "8-bit images (as saved); overall values are means over all images of a model, with the standard "
              "error of that mean",
}


def summarize(records: Sequence[dict], models: Sequence[str], metrics: Sequence[str]) -> dict:
    """records: one per image with "model", "prompt" (template), "text" and a number per metric.
    Returns {"overall": {model: {metric: {mean, sem, n}}}, "per_prompt": [{prompt, text, results}]}."""
    overall = {model: {metric: mean_and_error([r[metric] for r in records if r["model"] == model])
                       for metric in metrics} for model in models}
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    per_prompt = []
    for prompt in prompts:
        mine = [r for r in records if r["prompt"] == prompt]
        results = {model: {metric: mean_and_error([r[metric] for r in mine if r["model"] == model])["mean"]
                           for metric in metrics} for model in models}
        per_prompt.append({"prompt": prompt, "text": mine[0]["text"], "results": results})
    return {"overall": overall, "per_prompt": per_prompt}


def mean_and_error(values: Sequence[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": None, "sem": None, "n": 0}
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "sem": math.sqrt(variance / n) if n > 1 else None, "n": n}


def markdown(report: dict) -> str:
    metrics, models = report["metrics"], [m["label"] for m in report["models"]]
    titles = [METRIC_TITLES[m] for m in metrics]
    lines = ["# InstructBooth evaluation", "", f"Subject: **{report['subject']}**; {len(report['per_prompt'])} "
             f"prompts x {report['settings']['num_images']} images per model (seeds from {report['settings']['seed']}).",
             "", "## Overall (mean ± standard error over images)", "",
             "| model | " + " | ".join(titles) + " |", "|---|" + "---|" * len(metrics)]
    for model in models:
        cells = [_mean_sem(report["overall"][model][metric]) for metric in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Per prompt (means)", "", "| prompt | model | " + " | ".join(titles) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for row in report["per_prompt"]:
        for model in models:
            cells = [_number(row["results"][model][metric]) for metric in metrics]
            lines.append(f"| {row['text']} | {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Conventions", ""] + [f"- **{METRIC_TITLES.get(k, k)}**: {v}" for k, v in
                                           report["conventions"].items() if k in metrics or k == "images"]
    return "\n".join(lines) + "\n"


def html_page(report: dict) -> str:
    metrics, models = report["metrics"], [m["label"] for m in report["models"]]
    escape = html.escape
    head = "".join(f"<th>{escape(METRIC_TITLES[m])}</th>" for m in metrics)
    overall = "".join(f"<tr><td>{escape(model)}</td>" + "".join(
        f"<td>{escape(_mean_sem(report['overall'][model][m]))}</td>" for m in metrics) + "</tr>" for model in models)
    grid_head = "".join(f"<th>{escape(model)}</th>" for model in models)
    rows = []
    for row in report["per_prompt"]:
        cells = []
        for model in models:
            files = [r["file"] for r in report["images"] if r["model"] == model and r["prompt"] == row["prompt"]]
            pictures = "".join(f'<img src="{escape(f)}" alt="{escape(model)}">' for f in files)
            numbers = " · ".join(f"{METRIC_TITLES[m]} {_number(row['results'][model][m])}" for m in metrics)
            cells.append(f"<td>{pictures}<div class=n>{escape(numbers)}</div></td>")
        rows.append(f"<tr><th class=p>{escape(row['text'])}</th>{''.join(cells)}</tr>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>InstructBooth evaluation</title><style>"
            f"body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;"
            f"padding:4px;vertical-align:top}}img{{width:128px;height:auto;margin:1px}}.n{{font-size:12px}}"
            f".p{{max-width:180px;text-align:left}}</style></head><body>"
            f"<h1>InstructBooth evaluation: {escape(report['subject'])}</h1>"
            f"<h2>Overall (mean ± standard error)</h2><table><tr><th>model</th>{head}</tr>{overall}</table>"
            f"<h2>Images per prompt</h2><table><tr><th>prompt (as scored)</th>{grid_head}</tr>{''.join(rows)}</table>"
            f"<h2>Conventions</h2><ul>" + "".join(f"<li><b>{escape(METRIC_TITLES.get(k, k))}</b>: {escape(v)}</li>"
                                                   for k, v in report["conventions"].items()) + "</ul></body></html>\n")


def write_reports(folder: Path, report: dict) -> list[Path]:
    """report.json, report.md and report.html in `folder`, each written atomically."""
    return [write_json(folder / "report.json", report), write_text(folder / "report.md", markdown(report)),
            write_text(folder / "report.html", html_page(report))]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _mean_sem(entry: dict) -> str:
    if entry["mean"] is None:
        return "-"
    return _number(entry["mean"]) + (f" ± {entry['sem']:.4f}" if entry["sem"] is not None else "")
