"""`instructbooth convert`: ImageReward.pt -> a safetensors copy (what ComfyUI's model dialog can fetch and
what loads without pickle).

    instructbooth convert ComfyUI/models/ImageReward/ImageReward.pt     # writes ImageReward.safetensors beside it

The copy holds the scoring tensors under their official names and the model's sizes in its
metadata; the ImageReward Loader node lists it, and scores are the same (tested).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Convert ImageReward.pt to safetensors (loads without pickle; the loader node lists it)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="ImageReward.pt (the official file) or another copy of it")
    parser.add_argument("--output", default=None, help="the .safetensors file to write (default: beside the input)")
    parser.add_argument("--config", default=None, help="config JSON for non-standard sizes (default: inferred)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="store in this dtype (default: as stored; float16 halves the file)")


def run(args: argparse.Namespace) -> int:
    from ..outputs import check_output_file
    from ..rewards import ImageRewardConfig, convert_to_safetensors, parse_dtype

    source = Path(args.weights)
    if not source.is_file():
        raise FileNotFoundError(f"no file {source}; download ImageReward.pt from huggingface.co/THUDM/ImageReward")
    target = check_output_file(args.output or source.with_suffix(".safetensors"), [source])
    config = ImageRewardConfig.from_json(args.config) if args.config else None
    written = convert_to_safetensors(source, target, config, dtype=parse_dtype(args.dtype) if args.dtype else None)
    print(f"wrote {written} ({written.stat().st_size / 2**30:.2f} GiB)")
    return 0
