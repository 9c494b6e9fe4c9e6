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

HELP = "Teach SD1.5 a subject from a few photos (DreamBooth LoRA)."


def _default(name: str):
    from ..personalize import PersonalizeConfig

    return getattr(PersonalizeConfig(), name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, help="base SD1.5 checkpoint (.safetensors file or diffusers folder)")
    add("--images", required=True, nargs="+", help="a folder of subject photos, or image files (.txt beside = caption)")
    add("--output", required=True, help="LoRA file to write (.safetensors)")
    subject = parser.add_argument_group("subject and prompts")
    subject.add_argument("--identifier", default=_default("identifier"), help="rare token for the subject (default sks)")
    subject.add_argument("--class-noun", default=_default("class_noun"), help="what the subject is (default plushie)")
    subject.add_argument("--description", default="", help='detail for rare subjects, e.g. "with a blue star on its belly"')
    subject.add_argument("--instance-template", default=_default("instance_template"), help="must contain {id}")
    subject.add_argument("--class-template", default=_default("class_template"), help="prior-preservation prompt")
    subject.add_argument("--no-captions", action="store_true", help="ignore .txt captions beside the images")
    train = parser.add_argument_group("training")
    for flag, name, kind in (("--rank", "rank", int), ("--alpha", "alpha", float), ("--steps", "steps", int),
                             ("--batch-size", "batch_size", int), ("--learning-rate", "learning_rate", float),
                             ("--warmup-steps", "warmup_steps", int), ("--resolution", "resolution", int),
                             ("--seed", "seed", int)):
        train.add_argument(flag, type=kind, default=_default(name), help=f"(default {_default(name)})")
    train.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder too")
    train.add_argument("--max-grad-norm", type=lambda v: None if v.lower() == "none" else float(v),
                       default=_default("max_grad_norm"),
                       help=f"gradient-norm clipping, 'none' for off (default {_default('max_grad_norm')})")
    train.add_argument("--flip", action="store_true",
                       help="random horizontal flips (off by default: they mirror asymmetric subjects)")
    train.add_argument("--allow-upscale", action="store_true", help="accept photos much smaller than the resolution")
    train.add_argument("--no-cache", action="store_true", help="re-encode images and prompts every step (slower)")
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    train.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    prior = parser.add_argument_group("prior preservation")
    prior.add_argument("--prior-preservation", action="store_true", help="add the class-image loss")
    prior.add_argument("--prior-weight", type=float, default=_default("prior_weight"))
    prior.add_argument("--class-images", default=None, help="folder of class images (missing ones generated there)")
    prior.add_argument("--num-class-images", type=int, default=_default("num_class_images"))
    prior.add_argument("--class-sample-steps", type=int, default=_default("class_sample_steps"),
                       help=f"sampler steps per class image (default {_default('class_sample_steps')})")
    prior.add_argument("--class-eta", type=float, default=_default("class_eta"),
                       help=f"DDIM noise of class images, 0 = deterministic (default {_default('class_eta')})")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--checkpoint-dir", default=None, help="folder for resumable training checkpoints")
    run_group.add_argument("--checkpoint-every", type=int, default=_default("checkpoint_every"))
    run_group.add_argument("--no-resume", action="store_true", help="start over, deleting old checkpoints")
    run_group.add_argument("--validation-prompt", action="append", default=[], help="repeatable; may use {id} {cls}")
    run_group.add_argument("--validation-every", type=int, default=0, help="steps between validation images")
    run_group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda when present)")
    run_group.add_argument("--log-every", type=int, default=10, help="steps between progress lines")


def config_from_args(args: argparse.Namespace):
    from ..personalize import PersonalizeConfig

    return PersonalizeConfig(
        identifier=args.identifier, class_noun=args.class_noun, description=args.description,
        instance_template=args.instance_template, class_template=args.class_template, use_captions=not args.no_captions,
        rank=args.rank, alpha=args.alpha, train_text_encoder=args.train_text_encoder, steps=args.steps,
        max_grad_norm=args.max_grad_norm,
        batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        resolution=args.resolution, flip=args.flip, allow_upscale=args.allow_upscale, cache=not args.no_cache,
        prior_preservation=args.prior_preservation, prior_weight=args.prior_weight,
        num_class_images=args.num_class_images, class_sample_steps=args.class_sample_steps,
        class_eta=args.class_eta, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, seed=args.seed, checkpoint_every=args.checkpoint_every,
        validation_prompts=tuple(args.validation_prompt), validation_every=args.validation_every,
    )


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
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    components = load_checkpoint(args.checkpoint, dtype=dtype, device=device)  # LoRA stays fp32 regardless
    class_images = None
    if args.prior_preservation and args.class_images:
        class_images = fill_class_folder(components, config, Path(args.class_images))
    started = time.perf_counter()

    def report(step) -> None:
        if step.step % max(args.log_every, 1) == 0 or step.step == step.total:
            rate = step.step / max(time.perf_counter() - started, 1e-9)
            print(f"step {step.step}/{step.total}  loss {step.loss:.4f}  {rate:.2f} steps/s", flush=True)

    try:
        result = personalize(
            components, images, config, callback=report, checkpoint_dir=args.checkpoint_dir,
            resume=not args.no_resume, class_images=class_images, base_model_hash=_hash_or_blank(args.checkpoint),
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
    from ..subject_data import tensor_to_pil

    for batch in result.validation:
        for index, image in enumerate(batch.images):
            target = folder / f"step-{batch.step:06d}-{index}.png"
            atomic_write(target, lambda p, im=image: tensor_to_pil(im).save(p, format="PNG"))


def fill_class_folder(components, config, folder: Path) -> Path:
    """Generates the class images `folder` lacks (PNG, numbered) and returns the folder."""
    from ..files import atomic_write
    from ..personalize import generate_class_images
    from ..subject_data import IMAGE_SUFFIXES, class_prompt, tensor_to_pil

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


def _hash_or_blank(path: str) -> str:
    from ..checkpoint import file_sha256

    return file_sha256(path) if Path(path).is_file() else ""
