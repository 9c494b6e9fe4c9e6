"""`instructbooth generate`: sample images from an SD1.5 checkpoint with LoRA files.

    instructbooth generate --checkpoint sd15.safetensors --lora sks_plushie_rl.safetensors \
        --prompt "{subject} riding a bicycle" --num-images 4 --output-dir out/

A prompt may use the template grammar (prompts.py) with the subject of the first LoRA that
names one: `{subject}` is its trigger phrase ("sks plushie"), `{id}` and `{cls}` its identifier
and class noun (an older prompt's lone `{id}` is read as `{subject}`). `--lora FILE:0.8`
applies a LoRA at scale 0.8. Image i of a prompt uses seed `--seed + i`, so the same command
makes the same images. Writes
`<prompt index>-<seed>.png` and `images.json` (prompt, seed and file of every image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .models import RANDOM_MODELS, check_sampler_settings, load_components, sampler_settings

HELP = "Sample images from an SD1.5 checkpoint with optional LoRA files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", help="SD1.5 checkpoint (.safetensors file or diffusers folder)")
    add("--random-model", choices=RANDOM_MODELS, help=argparse.SUPPRESS)
    add("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="LoRA to apply (repeatable)")
    add("--prompt", action="append", default=[], help="a prompt (repeatable); {subject} = the LoRA's trigger phrase, "
        "{id} / {cls} its identifier / class noun")
    add("--prompts", help="a .txt file of prompts, one per line ('#' comments)")
    add("--negative-prompt", default="", help="the unconditional branch's prompt")
    add("--num-images", type=int, default=1, help="images per prompt (default 1)")
    add("--seed", type=int, default=0, help="seed of the first image of each prompt (default 0)")
    add("--steps", type=int, default=50, help="DDIM steps (default 50)")
    add("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    add("--eta", type=float, default=1.0, help="DDIM noise: 1 = stochastic (default), 0 = deterministic DDIM")
    add("--height", type=int, default=512)
    add("--width", type=int, default=512)
    add("--batch-size", type=int, default=4, help="images per sampler call (default 4)")
    add("--output-dir", required=True, help="folder for the PNG files")
    add("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda when present)")
    add("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="model weights dtype")


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`path` or `path:scale` -> (path, scale); a Windows drive letter is not a scale."""
    path, sep, scale = spec.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):
        try:
            return path, float(scale)
        except ValueError:
            pass
    return spec, 1.0


def gather_prompts(args: argparse.Namespace) -> list[str]:
    from ..prompts import read_prompt_file

    prompts = list(args.prompt) + (read_prompt_file(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("give at least one --prompt (or --prompts FILE)")
    return prompts


def fill_subject(prompts: list[str], meta) -> list[str]:
    """Prompts with the grammar's placeholders filled from a LoRA's metadata (`meta` None: no
    LoRA names a subject); prompts without placeholders come back as they are."""
    from ..prompts import Subject, fill_template, migrate_templates, template_slots

    prompts = migrate_templates(prompts)
    if not any(template_slots(p) for p in prompts):
        return prompts
    if meta is None:
        raise ValueError("a prompt uses {subject}, {id} or {cls} but no LoRA names a subject; "
                         "write the words into the prompt")
    if meta.identifier and meta.class_noun:
        subject = Subject(meta.identifier, meta.class_noun)
        return [fill_template(p, subject) for p in prompts]
    unusable = [p for p in prompts if template_slots(p) - {"subject"}]
    if unusable:
        raise ValueError(f"prompt {unusable[0]!r} uses {{id}} or {{cls}}, but the LoRA records only its trigger "
                         f"phrase {meta.trigger_phrase!r}; write {{subject}}")
    return [p.replace("{subject}", meta.trigger_phrase) for p in prompts]


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..files import atomic_write, write_json
    from ..lora import apply_lora, load_lora
    from ..outputs import check_output_folder
    from ..sampling import PromptEmbeddingCache, sample_images
    from ..training import non_finite_keys, require_finite_weights

    check_sampler_settings(args)
    specs = [parse_lora_spec(spec) for spec in args.lora]
    check_output_folder(args.output_dir, [args.checkpoint, args.prompts, *(path for path, _ in specs)])
    prompts = gather_prompts(args)
    loras = [(path, scale, *load_lora(path)) for path, scale in specs]
    prompts = fill_subject(prompts, next((meta for _, _, _, meta in loras if meta.trigger_phrase), None))
    device = resolve_device(args.device)
    components = load_components(args, device, args.dtype)
    require_finite_weights(components.modules(), "the checkpoint")  # NaN weights make black images
    for path, scale, state, _ in loras:
        if non_finite_keys(state):
            raise ValueError(f"{path} holds NaN or inf weights: it was saved from a diverged run")
        patched = apply_lora(components, state, unet_scale=scale, text_scale=scale)
        print(f"applied {path} at scale {scale} ({patched} modules)")

    jobs = [(i, p, args.seed + k) for i, p in enumerate(prompts) for k in range(args.num_images)]
    cache, records, folder = PromptEmbeddingCache(components), [], Path(args.output_dir)
    for start in range(0, len(jobs), max(args.batch_size, 1)):
        chunk = jobs[start : start + args.batch_size]
        images = sample_images(components, [p for _, p, _ in chunk], [s for _, _, s in chunk], sampler_settings(args),
                               embeddings=cache)
        for (index, prompt, seed), image in zip(chunk, images):
            target = folder / f"{index:03d}-{seed}.png"
            atomic_write(target, lambda p, im=image: _to_pil(im).save(p, format="PNG"))
            records.append({"prompt": prompt, "seed": seed, "file": target.name})
    write_json(folder / "images.json", {"images": records, "loras": [[p, s] for p, s, _, _ in loras],
                                        "steps": args.steps, "guidance": args.guidance, "eta": args.eta})
    print(f"wrote {len(records)} images to {folder}")
    return 0


def _to_pil(image):
    from ..images import tensor_to_pil

    return tensor_to_pil(image)
