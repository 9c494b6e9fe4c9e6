"""`instructbooth rl`: make a personalized model follow instructions again (InstructBooth stage 2).

    instructbooth rl --checkpoint sd15.safetensors --lora sks_plushie.safetensors \
        --reward imagereward:/models/ImageReward.pt --output sks_plushie_rl.safetensors

Trains a new LoRA on top of the personalized one with DDPO (or `--method rwr`) on the
default action and interaction prompts (or `--prompts my.txt`, one `{subject}` template
per line) and writes ONE LoRA file that ComfyUI's LoraLoader applies alone. Every RLConfig
field is a flag (`--sample-steps 50 --clip-range 1e-4 ...`). Metrics (JSON and a reward
curve) go to the checkpoint folder, or `<output stem>_metrics/`. Several GPUs:
`accelerate launch --num_processes 4 -m instructbooth.cli rl ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from .config_flags import add_config_flags, given_fields
from .models import RANDOM_MODELS, checkpoint_hash, load_components

HELP = "Make a personalized model follow instructions again (DDPO / RWR on a reward)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", help="base SD1.5 checkpoint (.safetensors file or diffusers folder)")
    add("--random-model", choices=RANDOM_MODELS, help=argparse.SUPPRESS)
    add("--lora", help="the personalized LoRA (from `instructbooth personalize`); its metadata names the subject")
    add("--reward", required=True, help="reward spec: imagereward:/path/ImageReward.pt, brightness, target_color:1,0,0")
    add("--output", required=True, help="LoRA file to write (.safetensors)")
    subject = parser.add_argument_group("subject and prompts")
    subject.add_argument("--identifier", help="rare token of the subject (default: from the LoRA's metadata)")
    subject.add_argument("--class-noun", help="what the subject is (default: from the LoRA's metadata)")
    subject.add_argument("--description", help="detailed description (default: from the LoRA's metadata)")
    subject.add_argument("--prompts", default="actions,interactions",
                         help="comma-separated shipped sets or .txt files of {subject} templates "
                              "(default actions,interactions)")
    subject.add_argument("--heldout", default="heldout", help="held-out set or .txt file; 'none' for no evaluation")
    subject.add_argument("--subject-images", help="folder of the subject photos (RWR's regulariser)")
    subject.add_argument("--regulariser-images", help="rwr/lee: images for the beta term instead of the subject photos "
                         "(class images, a captioned folder: a .txt beside an image is its prompt)")
    subject.add_argument("--subject-measure", help="subject likeness of identifier samples to --subject-images, logged "
                         "every epoch and read by --subject-threshold: dino:/models/dino-vits16 or clip_i:/models/clip")
    from ..rl.config import RLConfig

    add_config_flags(parser.add_argument_group("RL settings (RLConfig)"), RLConfig)
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--checkpoint-dir", help="folder for per-epoch checkpoints and metrics (resumable)")
    run_group.add_argument("--no-resume", action="store_true", help="start over, deleting old checkpoints")
    run_group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (ignored under accelerate)")


def config_from_args(args: argparse.Namespace):
    from ..rl.config import RLConfig

    return RLConfig(**given_fields(args, RLConfig))


# --- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..lora import save_lora
    from ..outputs import save_or_rescue
    from ..rl.distributed import Processes
    from ..rl.metrics import write_metrics
    from ..rl.trainer import train_rl
    from ..training import NonFiniteLossError

    config = config_from_args(args)
    output = check_inputs(args)  # before any work
    processes, device = Processes.from_environment()
    if processes.world_size == 1 and args.device != "auto":
        from ..devices import resolve_device

        device = resolve_device(args.device)
    inputs = load_inputs(args, config, device)
    components, model_hash = load_model(args, device)
    try:
        result = train_rl(components, inputs.reward, inputs.prompts, config, callback=_progress_printer(processes.is_main),
                          checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume, base_lora=inputs.base_lora,
                          subject_images=inputs.subject_images, regulariser_images=args.regulariser_images,
                          subject_measure=inputs.measure, base_model_hash=model_hash or inputs.meta.base_model_hash)
    except KeyboardInterrupt:
        kept = f"; rerun the same command to resume from {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"interrupted{kept}", file=sys.stderr)
        return 130
    except NonFiniteLossError as error:
        print(f"instructbooth rl: error: {error}", file=sys.stderr)
        return 1
    if not processes.is_main:
        return 0
    written, saved = save_or_rescue(lambda target: save_lora(target, result.lora_state, result.metadata), output,
                                    log=lambda message: print(f"instructbooth rl: error: {message}", file=sys.stderr))
    if args.checkpoint_dir is None:
        write_metrics(output.with_name(f"{output.stem}_metrics"), result.metrics)
    print(summary_line(result, written))
    return 0 if saved else 1


def check_inputs(args: argparse.Namespace) -> Path:
    """The output path, after refusing outputs over inputs, unwritable folders and a checkpoint
    folder made from other inputs (before any model loads)."""
    from ..outputs import check_output_file, check_output_folder
    from ..rewards.registry import reward_weights_file
    from .run_inputs import check_run_inputs

    inputs = [args.checkpoint, args.lora, reward_weights_file(args.reward), args.subject_images, args.regulariser_images,
              reward_weights_file(args.subject_measure or ""), *prompt_files(args)]
    output = check_output_file(args.output, inputs, folders=[args.checkpoint_dir])
    check_output_folder(args.checkpoint_dir or output.with_name(f"{output.stem}_metrics"), inputs)
    check_run_inputs(args.checkpoint_dir, {
        "base checkpoint": args.checkpoint or f"random:{args.random_model}", "personalized LoRA": args.lora,
        "reward": [args.reward, *filter(None, [reward_weights_file(args.reward)])],
        "prompts": [args.prompts, args.heldout, *prompt_files(args)],
        "subject images": args.subject_images, "regulariser images": args.regulariser_images,
        "subject measure": args.subject_measure}, not args.no_resume)
    return output


def load_inputs(args: argparse.Namespace, config, device) -> SimpleNamespace:
    """The personalized LoRA and its metadata, the prompts, the reward and subject measure, and
    the photos (bad photos and images fail here, before the model loads)."""
    from ..lora import LoraMetadata, load_lora
    from ..rewards import load_reward
    from ..subject_data import load_subject_images, training_photos

    base_lora, meta = load_lora(args.lora) if args.lora else (None, LoraMetadata())
    measure = None
    if args.subject_measure:
        measure = load_reward(args.subject_measure, **_reward_options(args.subject_measure, device,
                                                                      args.subject_images))
    if args.regulariser_images:
        load_subject_images(args.regulariser_images)
    return SimpleNamespace(
        base_lora=base_lora, meta=meta, prompts=build_prompts(args, meta), measure=measure,
        reward=load_reward(args.reward, **_reward_options(args.reward, device)),
        subject_images=training_photos(args.subject_images, config.height, config.width) if args.subject_images
        else None)


def prompt_files(args: argparse.Namespace) -> list[str]:
    """The .txt prompt files among --prompts and --heldout (shipped set names are not files)."""
    names = [n.strip() for n in args.prompts.split(",")] + [args.heldout]
    return [n for n in names if n.endswith(".txt")]


def build_prompts(args: argparse.Namespace, meta):
    from ..prompts import RLPrompts, Subject, load_prompt_set

    identifier = args.identifier or meta.identifier
    class_noun = args.class_noun or meta.class_noun
    if not identifier or not class_noun:
        raise ValueError("the subject is unknown: give --identifier and --class-noun "
                         "(or a --lora whose metadata has them)")
    description = args.description if args.description is not None else meta.description
    subject = Subject(identifier, class_noun, description)
    templates = tuple(t for name in args.prompts.split(",") if name.strip() for t in load_prompt_set(name.strip()))
    heldout = () if args.heldout.lower() == "none" else tuple(load_prompt_set(args.heldout))
    return RLPrompts(templates, subject, heldout)


def _reward_options(spec: str, device, subject_images: str | None = None) -> dict:
    """Keyword options a reward spec's factory takes: the device for weighted models, and the
    subject photos for the subject measures (dino:, clip_i:)."""
    name = spec.split(":", 1)[0].strip().lower().replace("-", "_")
    if name in ("dino", "clip_i"):
        if not subject_images:
            raise ValueError(f"--subject-measure {spec} compares samples with the subject's photos: give "
                             "--subject-images (the photos the LoRA was personalized on)")
        return {"device": device, "reference_images": subject_images}
    from ..rewards.registry import device_options

    return device_options(spec, device)


def load_model(args: argparse.Namespace, device):
    """(components on `device`, sha256 of the checkpoint file or "")."""
    return load_components(args, device), checkpoint_hash(None if args.random_model else args.checkpoint)


def _progress_printer(enabled: bool):
    started = time.perf_counter()

    def report(step) -> None:
        if enabled:
            rate = step.step / max(time.perf_counter() - started, 1e-9)
            print(f"step {step.step}/{step.total}  loss {step.loss:+.4e}  {rate:.2f} steps/s", flush=True)

    return report


def summary_line(result, output: Path) -> str:
    last = result.metrics[-1]["reward"]["all"]["mean"] if result.metrics else float("nan")
    first = result.metrics[0]["reward"]["all"]["mean"] if result.metrics else float("nan")
    return (f"wrote {output} ({result.epochs_done} epochs, {result.stop_reason}; "
            f"mean reward {first:.4f} -> {last:.4f})")
