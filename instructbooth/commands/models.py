"""Loading the base model for a command, the same way everywhere: an SD1.5 checkpoint file or
diffusers folder (`--checkpoint`), or a seeded random model (`--random-model tiny|small-sd15`,
for smoke tests without weights), and the checkpoint's hash for LoRA metadata."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

RANDOM_MODELS = ("tiny", "small-sd15")  # seeded random components, for smoke tests without a checkpoint


def load_components(args: argparse.Namespace, device, dtype_name: str = "float32"):
    """The components of `--checkpoint` (or `--random-model`) on `device` in `dtype_name`."""
    import torch

    dtype = getattr(torch, dtype_name)
    if getattr(args, "random_model", None):
        from ..components import small_sd15_components, tiny_components

        build = tiny_components if args.random_model == "tiny" else small_sd15_components
        parts = build(seed=0)
        return parts if (str(device), dtype) == ("cpu", torch.float32) else parts.to(device, dtype)
    if not args.checkpoint:
        raise ValueError("give --checkpoint (an SD1.5 .safetensors file or diffusers folder)")
    from ..checkpoint import load_checkpoint

    return load_checkpoint(args.checkpoint, dtype=dtype, device=device)


def checkpoint_hash(path: str | None) -> str:
    """sha256 of the checkpoint file ("" for a folder, a random model or none)."""
    if not path or not Path(path).is_file():
        return ""
    from ..checkpoint import file_sha256

    return file_sha256(path)


def sampler_settings(args: argparse.Namespace):
    """The sampler flags (--steps --guidance --eta --height --width --negative-prompt) as settings."""
    from ..sampling import SamplerSettings

    return SamplerSettings(args.steps, args.guidance, args.eta, args.height, args.width, args.negative_prompt)


def check_sampler_settings(args: argparse.Namespace) -> None:
    """Refuses sampler flags that cannot work (non-finite guidance or eta, counts below 1, sizes
    the VAE cannot make), before any model loads."""
    for name in ("guidance", "eta"):
        if not math.isfinite(getattr(args, name)):
            raise ValueError(f"--{name} must be a finite number, got {getattr(args, name)}")
    if min(args.steps, args.num_images, args.batch_size) < 1:
        raise ValueError("--steps, --num-images and --batch-size must be >= 1")
    if args.height % 8 or args.width % 8:
        raise ValueError(f"--width and --height must be multiples of 8 (the VAE works in 8-pixel blocks), got "
                         f"{args.width}x{args.height}; {args.width // 8 * 8}x{args.height // 8 * 8} is the nearest below")
