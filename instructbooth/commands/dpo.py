"""`instructbooth dpo`: build preference pairs with a judge, then train Diffusion-DPO on a LoRA.

    instructbooth dpo --checkpoint sd15.safetensors --lora sks_plushie.safetensors \\
        --reward imagereward:/models/ImageReward.pt --output sks_plushie_dpo.safetensors

Pairs go to --pairs-dir (default: <output stem>_pairs/ beside the output) and training
checkpoints to --checkpoint-dir; both resume after an interruption unless --no-resume.
The output is ONE LoRA: the personalized one and the DPO-trained one merged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config_flags import add_config_flags, given_fields

HELP = "Align with automatically built preference pairs (Diffusion-DPO)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("files")
    files.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint (single file or diffusers folder)")
    files.add_argument("--output", required=True, help="the LoRA file to write (.safetensors)")
    files.add_argument("--lora", default=None, help="personalized LoRA to start from (its metadata names the subject)")
    files.add_argument("--taxonomy", default=None, help="taxonomy JSON/YAML (default: the shipped one)")
    files.add_argument("--pairs-dir", default=None, help="pair folder (default: <output stem>_pairs beside --output)")
    files.add_argument("--checkpoint-dir", default=None, help="training checkpoints and metrics.json (default: none)")
    files.add_argument("--no-resume", action="store_true", help="start pairs and training over instead of resuming")
    files.add_argument("--pairs-only", action="store_true", help="build the pairs and stop")
    files.add_argument("--reward", required=True,
                       help="the judge, a reward spec: imagereward:/path/ImageReward.pt, brightness, "
                            "target_color:1,0,0")
    subject = parser.add_argument_group("subject (default: from the --lora metadata; none: the taxonomy's default)")
    subject.add_argument("--identifier", default=None, help='rare token of the subject, e.g. "sks"')
    subject.add_argument("--class-noun", default=None, help='class of the subject, e.g. "plushie"')
    subject.add_argument("--description", default=None, help="detailed description of the subject")
    files.add_argument("--kinds", default="self,cross", help="pair kinds to train on (default self,cross)")
    files.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (cuda when present)")
    files.add_argument("--dtype", default="float32", help="weights dtype: float32, float16 or bfloat16")
    files.add_argument("--resolution", type=int, help="square pairs: sets --height and --width")
    files.add_argument("--pair-config", default=None, help="PairConfig fields as a JSON file or inline JSON (flags win)")
    files.add_argument("--dpo-config", default=None, help="DPOConfig fields as a JSON file or inline JSON (flags win)")
    from ..preference.dpo import DPOConfig
    from ..preference.pairs import PairConfig

    add_config_flags(parser.add_argument_group("preference pairs (PairConfig)"), PairConfig, shared=[DPOConfig])
    add_config_flags(parser.add_argument_group("Diffusion-DPO (DPOConfig)"), DPOConfig,
                     skip=set(PairConfig.__dataclass_fields__), aliases={"lora_rank": "--rank"})


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint
    from ..devices import resolve_device
    from ..outputs import save_or_rescue
    from ..lora import load_lora
    from ..preference.dpo import DPOConfig, PairData, save_result, train_dpo
    from ..preference.pairs import PairConfig, build_pairs
    from ..preference.taxonomy import Taxonomy
    from ..rewards import load_reward, parse_dtype
    from ..training import NonFiniteLossError

    device = resolve_device(args.device)
    dtype = parse_dtype(args.dtype)
    pair_config = PairConfig(**known_fields(pair_settings(args), PairConfig, "--pair-config"))
    dpo_config = DPOConfig(**known_fields(dpo_settings(args), DPOConfig, "--dpo-config"))
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    taxonomy = Taxonomy.load(args.taxonomy) if args.taxonomy else Taxonomy.default()
    output, pairs_dir = check_outputs(args)  # before any work
    base_lora, base_meta = load_lora(args.lora) if args.lora else (None, None)
    subject = make_subject(args, base_meta)
    components = load_checkpoint(args.checkpoint, dtype=dtype, device=device)
    judge = load_reward(args.reward, **reward_options(args.reward, device))
    print(f"building pairs in {pairs_dir} ({pair_config.prompt_pairs} prompt pairs, "
          f"{pair_config.images_per_prompt} images per prompt)", file=sys.stderr)
    try:
        built = build_pairs(components, judge, taxonomy, pairs_dir, pair_config, callback=_progress("prompt"),
                            resume=not args.no_resume, base_lora=base_lora, subject=subject)
        print(f"pairs: {json.dumps(built.counts)}", file=sys.stderr)
        del judge
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.pairs_only:
            return 0
        data = PairData.from_store(pairs_dir, kinds)
        result = train_dpo(components, data, dpo_config, callback=_progress("step"),
                           checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume, base_lora=base_lora,
                           subject=subject, base_model_hash=model_hash(args.checkpoint, base_meta))
    except KeyboardInterrupt:
        kept = f" and {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"interrupted; rerun the same command to resume from {pairs_dir}{kept}", file=sys.stderr)
        return 130
    except NonFiniteLossError as error:
        print(f"instructbooth dpo: error: {error}", file=sys.stderr)
        return 1
    path, saved = save_or_rescue(lambda target: save_result(result, target), output,
                                 log=lambda message: print(f"instructbooth dpo: error: {message}", file=sys.stderr))
    first, last = result.evaluations[0], result.evaluations[-1]
    print(f"wrote {path} ({result.steps_done} steps; implicit accuracy on the training pairs "
          f"{first['implicit_accuracy']:.3f} -> {last['implicit_accuracy']:.3f})")
    return 0 if saved else 1


def check_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the LoRA file to write, the pair folder), after refusing outputs over inputs, unwritable
    folders and a checkpoint folder made from other inputs."""
    from ..outputs import check_output_file, check_output_folder
    from ..rewards.registry import reward_weights_file
    from .run_inputs import check_run_inputs

    inputs = [args.checkpoint, args.lora, args.taxonomy, reward_weights_file(args.reward)]
    output = check_output_file(args.output, inputs, folders=[args.checkpoint_dir])
    pairs_dir = Path(args.pairs_dir) if args.pairs_dir else output.with_name(output.stem + "_pairs")
    for folder in (pairs_dir, args.checkpoint_dir):
        if folder:
            check_output_folder(folder, inputs)
    check_run_inputs(args.checkpoint_dir, {"base checkpoint": args.checkpoint, "personalized LoRA": args.lora,
                                           "taxonomy": args.taxonomy, "pairs folder": f"path {pairs_dir}"},
                     not args.no_resume)
    return output, pairs_dir


def pair_settings(args: argparse.Namespace) -> dict:
    from ..preference.pairs import PairConfig

    square = {"height": args.resolution, "width": args.resolution} if args.resolution else {}
    return {**read_settings(args.pair_config, "--pair-config"), **square, **given_fields(args, PairConfig)}


def dpo_settings(args: argparse.Namespace) -> dict:
    from ..preference.dpo import DPOConfig

    return {**read_settings(args.dpo_config, "--dpo-config"), **given_fields(args, DPOConfig)}


def read_settings(value: str | None, flag: str) -> dict:
    """A JSON object from a file path or inline text; {} when not given."""
    if not value:
        return {}
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{flag} must be a JSON file or inline JSON object, got {value!r}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{flag} must hold a JSON object of settings, got {type(settings).__name__}")
    return settings


def known_fields(settings: dict, cls, flag: str) -> dict:
    """`settings`, or a ValueError naming the keys `cls` does not have."""
    unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{flag}: unknown settings {unknown}; {cls.__name__} has {sorted(cls.__dataclass_fields__)}")
    return settings


def make_subject(args: argparse.Namespace, metadata):
    """The subject from the flags, else from the personalized LoRA's metadata; None without either."""
    from ..prompts import Subject

    identifier = args.identifier or (metadata.identifier if metadata else "")
    class_noun = args.class_noun or (metadata.class_noun if metadata else "")
    if not identifier and not class_noun:
        return None
    if not identifier or not class_noun:
        raise ValueError("give both --identifier and --class-noun (the LoRA's metadata names only one of them)")
    description = args.description if args.description is not None else (metadata.description if metadata else "")
    return Subject(identifier, class_noun, description)


def reward_options(spec: str, device) -> dict:
    """Reward models (ImageReward, a learned reward) run on the model's device; cheap rewards take no options."""
    from ..rewards.registry import device_options

    return device_options(spec, device)


def model_hash(checkpoint: str, metadata) -> str:
    """sha256 of the checkpoint file ("" for a folder), else what the personalized LoRA recorded."""
    from .models import checkpoint_hash

    return checkpoint_hash(checkpoint) or (metadata.base_model_hash if metadata else "")


def _progress(unit: str):
    def report(info) -> bool:
        loss = getattr(info, "loss", None)
        extra = f" loss {loss:.4f}" if loss is not None else f" pairs {getattr(info, 'pairs', 0)}"
        print(f"{unit} {info.step}/{info.total}{extra}", file=sys.stderr)
        return True

    return report
