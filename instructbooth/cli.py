"""The `instructbooth` command: one sub-command per job, each in `commands/<name>.py`.

Every command module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so
`instructbooth --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "personalize": "Teach SD1.5 a subject from a few photos (DreamBooth LoRA).",
    "rl": "Make a personalized model follow instructions again (DDPO / RWR on a reward).",
    "dpo": "Align with automatically built preference pairs (Diffusion-DPO).",
    "score": "Score images against a prompt with ImageReward (best-of-N ranking).",
    "generate": "Sample images from an SD1.5 checkpoint with optional LoRA files.",
    "evaluate": "Measure CLIP-T, CLIP-I, DINO (and ImageReward) of a base model and LoRAs on a prompt set.",
    "demo": "Run the whole method on a small built-in world on CPU and write a report.",
    "convert": "Convert ImageReward.pt to safetensors (loads without pickle; the loader node lists it).",
    "reward-train": "Learn a reward from good/bad feedback on images (Lee et al. 2023); use it as learned:FILE.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructbooth",
        description="Subject personalization and reward-guided alignment for Stable Diffusion 1.5.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


# OpenMP threads that wait by spinning collapse on a busy CPU: on 2 cores under load ~6, one demo
# UNet forward at 2 threads took 13.3 s spinning against 0.54 s with passive waiting (0.61 s with
# 1 thread). Set before torch loads its OpenMP runtime; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"instructbooth.commands.{name.replace('-', '_')}")
    command_parser = argparse.ArgumentParser(prog=f"instructbooth {name}", description=COMMANDS[name])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"instructbooth {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"instructbooth {name}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a permission denied mid-run: say so, no traceback
        print(f"instructbooth {name}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
