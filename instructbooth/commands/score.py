"""`instructbooth score`: rank image files for a prompt with ImageReward, best first."""

from __future__ import annotations

import argparse
import json
import os

HELP = "Score images against a prompt with ImageReward (best-of-N ranking)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP, ...)")
    parser.add_argument("--model", required=True, help="ImageReward.pt or a safetensors copy of it")
    parser.add_argument("--prompt", required=True, help="the prompt the images should show (may be empty)")
    parser.add_argument("--config", default=None, help="config JSON for non-standard sizes (default: inferred)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (cuda when present)")
    parser.add_argument("--dtype", default="float32",
                        help="float32 (the reference); float16 (GPU: half the memory, rankings kept in a full-size "
                             "check, scores within 0.0023; CPU: ~4-5x slower); bfloat16 (scores up to 0.024 off, "
                             "close images reordered)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..rewards import best_of_n, load_image_reward

    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image not found: {', '.join(missing)}")
    device = resolve_device(args.device)
    scorer = load_image_reward(args.model, args.config, device, args.dtype, args.batch_size)
    best = best_of_n(scorer, args.images, args.prompt, k=len(args.images))
    if not bool(best.scores.isfinite().all()):
        raise ValueError(f"the model gave non-finite scores ({best.scores.tolist()}): its weights hold NaN or inf "
                         f"values, or {args.dtype} overflowed; check the file, or try --dtype float32")
    rows = [
        {"rank": place, "score": round(float(score), 6), "file": path}
        for place, (score, path) in enumerate(zip(best.scores.tolist(), best.images), start=1)
    ]
    print(json.dumps({"prompt": args.prompt, "results": rows}, indent=2) if args.json else format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'score':>9}  file"]
    lines += [f"{row['rank']:>4}  {row['score']:>9.4f}  {row['file']}" for row in rows]
    return "\n".join(lines)
