"""`instructbooth personalize`: train a subject LoRA from a few photos (DreamBooth, stage 1).

    instructbooth personalize --checkpoint sd15.safetensors --images photos/ \
        --class-noun plushie --description "with a blue star on its belly" --output sks_plushie.safetensors

Writes the LoRA (loadable by ComfyUI's LoraLoader) and `<output stem>.loss.json`. With
`--checkpoint-dir`, a rerun of the same command resumes where the last one stopped
(Ctrl-C included). With `--prior-preservation --class-images DIR`, class images missing
from DIR are generated once by the base model and saved there for later runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config_flags import add_config_flags, given_fields
from .models import checkpoint_hash

HELP = "Teach SD1.5 a subject from a few photos (DreamBooth LoRA)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..personalize import PersonalizeConfig

    add = parser.add_argument
    add("--checkpoint", required=True, help="base SD1.5 checkpoint (.safetensors file or diffusers folder)")
    add("--images", required=True, nargs="+", help="a folder of subject photos, or image files (.txt beside = caption)")
    add("--output", required=True, help="LoRA file to write (.safetensors)")
    add("--class-images", default=None, help="prior preservation: folder of class images (missing ones generated there)")
    add_config_flags(parser.add_argument_group("settings (PersonalizeConfig)"), PersonalizeConfig,
                     skip=("validation_prompts",), aliases={"lora_rank": "--rank", "lora_alpha": "--alpha"})
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--validation-prompt", action="append", default=[],
                           help="repeatable; a template with {id} {cls} {desc} sampled every --validation-every steps")
    run_group.add_argument("--checkpoint-dir", default=None, help="folder for resumable training checkpoints")
    run_group.add_argument("--no-resume", action="store_true", help="start over, deleting old checkpoints")
    run_group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda when present)")
    run_group.add_argument("--log-every", type=int, default=10, help="steps between progress lines")


def config_from_args(args: argparse.Namespace):
    from ..personalize import PersonalizeConfig

    return PersonalizeConfig(**given_fields(args, PersonalizeConfig), validation_prompts=tuple(args.validation_prompt))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..outputs import check_output_file, check_output_folder, save_or_rescue
    from .run_inputs import check_run_inputs
    from ..personalize import check_settings, personalize, save_result
    from ..subject_data import load_subject_images
    from ..training import NonFiniteLossError

    config = config_from_args(args)
    check_settings(config)  # before any work
    images = args.images  # folders and/or files
    inputs = [args.checkpoint, *images, args.class_images]
    output = check_output_file(args.output, inputs, folders=[args.checkpoint_dir])  # before any work
    if args.checkpoint_dir:
        check_output_folder(args.checkpoint_dir, inputs)
    load_subject_images(images)  # fail on bad photos before loading the model
    check_run_inputs(args.checkpoint_dir, {"base checkpoint": args.checkpoint, "photos": images,
                                           "class images folder": f"path {args.class_images}"}, not args.no_resume)
    device = resolve_device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    components = load_checkpoint(args.checkpoint, dtype=dtype, device=device)  # LoRA stays fp32 regardless
    class_images = None
    if config.prior_preservation and args.class_images:
        class_images = fill_class_folder(components, config, Path(args.class_images))
    started = time.perf_counter()

    def report(step) -> None:
        if step.step % max(args.log_every, 1) == 0 or step.step == step.total:
            rate = step.step / max(time.perf_counter() - started, 1e-9)
            print(f"step {step.step}/{step.total}  loss {step.loss:.4f}  {rate:.2f} steps/s", flush=True)

    try:
        result = personalize(
            components, images, config, callback=report, checkpoint_dir=args.checkpoint_dir,
            resume=not args.no_resume, class_images=class_images, base_model_hash=checkpoint_hash(args.checkpoint),
        )
    except KeyboardInterrupt:
        kept = f"; rerun the same command to resume from {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"interrupted{kept}", file=sys.stderr)
        return 130
    except NonFiniteLossError as error:
        print(f"instructbooth personalize: error: {error}", file=sys.stderr)
        return 1
    path, saved = save_or_rescue(lambda target: save_result(result, target), output, log=_error)
    save_validation(result, path.with_name(f"{path.stem}_validation"))
    print(f"wrote {path} ({result.steps_done} steps, final loss {result.loss_history[-1]:.4f})")
    return 0 if saved else 1


def _error(message: str) -> None:
    print(f"instructbooth personalize: error: {message}", file=sys.stderr)


def save_validation(result, folder: Path) -> None:
    """Validation images as `folder/step-<step>-<i>.png`."""
    from ..files import atomic_write
    from ..images import tensor_to_pil

    for batch in result.validation:
        for index, image in enumerate(batch.images):
            target = folder / f"step-{batch.step:06d}-{index}.png"
            atomic_write(target, lambda p, im=image: tensor_to_pil(im).save(p, format="PNG"))


def fill_class_folder(components, config, folder: Path) -> Path:
    """Generates the class images `folder` lacks (PNG, numbered) and returns the folder."""
    from ..files import atomic_write
    from ..personalize import generate_class_images
    from ..images import tensor_to_pil
    from ..subject_data import IMAGE_SUFFIXES, class_prompt

    folder.mkdir(parents=True, exist_ok=True)
    have = len([p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
    missing = config.num_class_images - have
    if missing > 0:
        prompt = class_prompt(config.class_template, config.identifier, config.class_noun)
        print(f"generating {missing} class images for {prompt!r} into {folder}", flush=True)
        images = generate_class_images(components, prompt, config, count=missing, first=have)
        for index, image in enumerate(images, start=have):
            atomic_write(folder / f"class-{index:05d}.png", lambda p, im=image: tensor_to_pil(im).save(p, format="PNG"))
    return folder
