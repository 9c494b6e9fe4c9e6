"""`instructbooth evaluate`: CLIP-T, CLIP-I, DINO (and ImageReward) of a base model and LoRAs.

    instructbooth evaluate --checkpoint sd15.safetensors --references photos/ \
        --lora dreambooth=sks_plushie.safetensors instructbooth=sks_plushie_rl.safetensors \
        --prompts dreambooth_objects --clip models/clip-vit-large-patch14 --dino models/dino-vits16 \
        --output-dir eval/

Every model (the base checkpoint without a LoRA, unless --no-base, and each labelled LoRA) draws
`--num-images` images per prompt with the same seeds (`--seed + i`), so the columns differ by the
LoRA alone. Prompts are subject templates (prompts.py; shipped sets: dreambooth_objects,
dreambooth_live, heldout; or .txt files): "a {id} {cls} in the snow" is generated as "a sks
plushie in the snow" and scored as "a plushie in the snow". Writes images/<label>/*.png,
report.json, report.md and report.html.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from .models import RANDOM_MODELS, check_sampler_settings, sampler_settings

HELP = "Measure CLIP-T, CLIP-I, DINO (and ImageReward) of a base model and LoRAs on a prompt set."
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BASE_LABEL = "base"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", help="base SD1.5 checkpoint (.safetensors file or diffusers folder)")
    add("--random-model", choices=RANDOM_MODELS, help=argparse.SUPPRESS)
    add("--lora", nargs="+", action="extend", default=[], metavar="LABEL=FILE[:SCALE]",
        help="LoRAs to compare, e.g. dreambooth=a.safetensors instructbooth=b.safetensors (label: file stem if omitted)")
    add("--no-base", action="store_true", help="leave out the base model without a LoRA")
    add("--references", required=True, help="folder of the subject's reference photos (CLIP-I, DINO)")
    add("--prompts", default="dreambooth_objects",
        help="comma-separated shipped sets (dreambooth_objects, dreambooth_live, heldout) or .txt files of subject "
             "templates ('a {id} {cls} in the snow', '{subject} riding a horse'; default dreambooth_objects)")
    add("--identifier", help="the subject's rare token (default: from the first LoRA's metadata)")
    add("--class-noun", help="the subject's class noun (default: from the first LoRA's metadata)")
    add("--clip", help="CLIP weights (transformers folder or file) for CLIP-T and CLIP-I")
    add("--dino", help="DINO ViT-S/16 weights (facebook/dino-vits16 folder or file) for DINO")
    add("--image-reward", help="ImageReward.pt or its safetensors copy (optional extra column)")
    add("--num-images", type=int, default=4, help="images per prompt and model (default 4)")
    add("--seed", type=int, default=0, help="seed of a prompt's first image (default 0)")
    add("--steps", type=int, default=50, help="DDIM steps (default 50)")
    add("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    add("--eta", type=float, default=1.0, help="DDIM noise: 1 stochastic (default), 0 deterministic")
    add("--negative-prompt", default="", help="the unconditional branch's prompt")
    add("--height", type=int, default=512)
    add("--width", type=int, default=512)
    add("--batch-size", type=int, default=4, help="images per sampler call (default 4)")
    add("--output-dir", required=True, help="folder for images/ and the reports")
    add("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda when present)")
    add("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="SD weights dtype")


def parse_model_specs(specs: list[str], with_base: bool) -> list[tuple[str, str | None, float]]:
    """[(label, LoRA file or None for the base, scale)]; labels unique and usable as folder names."""
    from .generate import parse_lora_spec

    models = [(BASE_LABEL, None, 1.0)] if with_base else []
    for spec in specs:
        label, sep, rest = spec.partition("=")
        if not sep:
            label, rest = Path(parse_lora_spec(spec)[0]).stem, spec
        path, scale = parse_lora_spec(rest)
        if not LABEL.match(label):
            raise ValueError(f"label {label!r} of --lora {spec!r}: use letters, digits, '-', '_' or '.' (it names a folder)")
        if not math.isfinite(scale):
            raise ValueError(f"--lora {spec!r}: the scale must be a finite number")
        models.append((label, path, scale))
    labels = [label for label, _, _ in models]
    if not models:
        raise ValueError("nothing to evaluate: give --lora LABEL=FILE (or leave out --no-base)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {', '.join(labels)}; write them as LABEL=FILE")
    return models


def check_settings(args: argparse.Namespace) -> None:
    check_sampler_settings(args)
    if not (args.clip or args.dino or args.image_reward):
        raise ValueError("nothing to measure: give --clip (CLIP-T, CLIP-I), --dino and/or --image-reward")
    if not args.checkpoint and not args.random_model:
        raise ValueError("give --checkpoint (an SD1.5 .safetensors file or diffusers folder)")


def check_outputs(args: argparse.Namespace, models, prompt_files: list[str]) -> Path:
    from ..outputs import OutputError, check_output_folder

    inputs = [args.checkpoint, args.references, args.clip, args.dino, args.image_reward, *prompt_files,
              *(path for _, path, _ in models if path)]
    folder = check_output_folder(args.output_dir, inputs)
    for item in (args.references, args.clip, args.dino, args.checkpoint):
        if item and Path(item).is_dir() and folder.resolve().is_relative_to(Path(item).resolve()):
            raise OutputError(f"the output folder {folder} is inside the input folder {item}; write it somewhere else")
    for label, _, _ in models:
        existing = folder / "images" / label
        if existing.is_dir() and any(existing.iterdir()):
            print(f"note: {existing} holds images of an earlier run; they are replaced")
    return folder


def load_prompts(names: str) -> tuple[list[str], list[str]]:
    """(subject templates, the .txt files among the names)."""
    from ..prompts import check_subject_template, load_prompt_set, migrate_templates

    parts = [n.strip() for n in names.split(",") if n.strip()]
    templates = migrate_templates([t for name in parts for t in load_prompt_set(name)])
    for template in templates:
        check_subject_template(template)
    return list(dict.fromkeys(templates)), [n for n in parts if n.endswith(".txt")]


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..evaluation.scoring import SubjectScorer
    from ..lora import load_lora
    from ..subject_data import load_subject_images

    check_settings(args)
    models = parse_model_specs(args.lora, not args.no_base)
    templates, prompt_files = load_prompts(args.prompts)
    folder = check_outputs(args, models, prompt_files)
    references = [image.pixels for image in load_subject_images(Path(args.references))]
    loras = {label: (load_lora(path), scale) for label, path, scale in models if path}
    subject = _subject(args, [meta for (_, meta), _ in loras.values()])
    _refuse_non_finite(loras)
    device = resolve_device(args.device)
    scorer = SubjectScorer(references, *_metric_models(args, device))  # wrong weights fail before sampling
    print(f"evaluating {len(models)} models x {len(templates)} prompts x {args.num_images} images "
          f"({', '.join(scorer.metrics)}) for {subject.trigger_phrase}")
    from ..lora import lora_merged
    from .models import load_components

    components = load_components(args, device, args.dtype)
    _refuse_unknown_modules(components, loras)
    records = []
    for label, path, scale in models:
        state = loras[label][0][0] if path else None
        with lora_merged(components, state, scale):
            records += _evaluate_model(args, components, scorer, label, templates, subject, folder)
    report = _report(args, models, subject, scorer.metrics, records)
    written = _write(folder, report)
    _print_overall(report)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _subject(args: argparse.Namespace, metas):
    from ..prompts import Subject

    identifier = args.identifier or next((m.identifier for m in metas if m.identifier), None)
    class_noun = args.class_noun or next((m.class_noun for m in metas if m.class_noun), None)
    if not identifier or not class_noun:
        raise ValueError("the subject is unknown: give --identifier and --class-noun (or a --lora whose metadata "
                         "names them)")
    return Subject(identifier, class_noun)


def _refuse_non_finite(loras: dict) -> None:
    import torch

    for label, ((state, _), _) in loras.items():
        if any(not torch.isfinite(tensor).all() for tensor in state.values()):
            raise ValueError(f"the LoRA {label!r} holds NaN or inf weights: it was saved from a diverged run")


def _refuse_unknown_modules(components, loras: dict) -> None:
    """Before any sampling: every LoRA must fit this model (a SDXL LoRA would fail half-way)."""
    from ..lora import find_unknown_modules

    for label, ((state, _), _) in loras.items():
        unknown = find_unknown_modules(components, state)
        if unknown:
            raise ValueError(f"the LoRA {label!r} does not fit this SD1.5 model: {len(unknown)} modules match no "
                             f"layer ({', '.join(unknown[:3])})")


def _metric_models(args: argparse.Namespace, device):
    from ..evaluation import load_clip, load_dino

    clip = load_clip(args.clip, device=device) if args.clip else None
    dino = load_dino(args.dino, device=device) if args.dino else None
    reward = None
    if args.image_reward:
        from ..rewards import load_reward

        reward = load_reward(f"imagereward:{args.image_reward}", device=device)
    return clip, dino, reward


def _evaluate_model(args, components, scorer, label, templates, subject, folder: Path) -> list[dict]:
    from ..files import atomic_write
    from ..prompts import with_identifier
    from ..sampling import PromptEmbeddingCache, sample_images
    from .generate import _to_pil
    from ..evaluation.scoring import scoring_text

    jobs = [(i, t, args.seed + k) for i, t in enumerate(templates) for k in range(args.num_images)]
    cache, records = PromptEmbeddingCache(components), []
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        images = sample_images(components, [with_identifier(t, subject) for _, t, _ in chunk],
                               [s for _, _, s in chunk], sampler_settings(args), embeddings=cache)
        texts = [scoring_text(t, subject) for _, t, _ in chunk]
        scores = scorer.score(images, texts)
        for row, ((index, template, seed), image) in enumerate(zip(chunk, images)):
            relative = Path("images") / label / f"{index:03d}-{seed}.png"
            atomic_write(folder / relative, lambda p, im=image: _to_pil(im).save(p, format="PNG"))
            records.append({"model": label, "prompt": template, "text": texts[row], "seed": seed,
                            "file": relative.as_posix(), **{m: scores[m][row] for m in scorer.metrics}})
        print(f"{label}: {min(start + args.batch_size, len(jobs))}/{len(jobs)} images", flush=True)
    return records


def _report(args, models, subject, metrics, records) -> dict:
    from ..evaluation.report import CONVENTIONS, summarize

    labels = [label for label, _, _ in models]
    return {
        "subject": subject.trigger_phrase, "metrics": list(metrics),
        "models": [{"label": label, "lora": path, "scale": scale} for label, path, scale in models],
        **summarize(records, labels, metrics),
        "images": records,
        "weights": {"checkpoint": args.checkpoint or f"random:{args.random_model}", "clip": args.clip,
                    "dino": args.dino, "image_reward": args.image_reward, "references": args.references},
        "settings": {"prompts": args.prompts, "num_images": args.num_images, "seed": args.seed, "steps": args.steps,
                     "guidance": args.guidance, "eta": args.eta, "height": args.height, "width": args.width,
                     "negative_prompt": args.negative_prompt, "dtype": args.dtype},
        "conventions": CONVENTIONS,
    }


def _write(folder: Path, report: dict) -> list[Path]:
    from ..evaluation.report import write_reports

    return write_reports(folder, report)


def _print_overall(report: dict) -> None:
    from ..evaluation.scoring import METRIC_TITLES

    for model in report["overall"]:
        numbers = "  ".join(f"{METRIC_TITLES[m]} {report['overall'][model][m]['mean']:.4f}" for m in report["metrics"])
        print(f"{model:>16}: {numbers}")
