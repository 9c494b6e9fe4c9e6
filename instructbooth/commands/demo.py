"""`instructbooth demo`: the whole method on the built-in world of shapes, on a CPU.

    instructbooth demo                      # under 8 minutes on 2 CPU cores (seed 0: 456 s)
    instructbooth demo --quick              # every stage in seconds (a smoke test)
    instructbooth demo --out my_demo --seed 3 --rl-epochs 30
    instructbooth demo --recipe no_prior    # the labelled recipe without prior preservation (see the README)

Personalizes the subject (a striped diamond, "sks toy") from 6 photos, measures the
overfitting (alignment on instructions with the identifier vs. the base model on the
same instructions without it), runs RL with the alignment reward on prompts with and
without the identifier, and writes report.md / report.html with grids, the reward
curve and the numbers into --out. Progress lines go to stdout.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

RECIPE_NAMES = ("default", "no_prior")  # demo.settings.RECIPES, named here so --help needs no torch import
# One thread: the demo's models are small, so a second thread barely helps (40 DreamBooth steps on an idle
# 2-core machine: 5.2 s, against 4.7 s at 2 spinning threads and 12.7 s at 2 passive ones), and one thread
# cannot collapse on a busy machine (under load 10: 17 s, where 2 threads, spinning or passive, took over 100 s).
DEMO_THREADS = 1
HELP = "Run the whole method on a small built-in world on CPU and write a report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--out", default="instructbooth_demo", help="folder for the report and its files (default instructbooth_demo)")
    add("--seed", type=int, default=0, help="seed of the photos, training and evaluation (default 0)")
    add("--quick", action="store_true", help="a seconds-long run of every stage (numbers mean nothing)")
    add("--recipe", default="default", choices=RECIPE_NAMES,
        help="demo settings: the default (prior preservation on the training scenes, RL on 256 samples per "
             "update), or no_prior (no prior preservation, RL on 64 samples per update; see the README)")
    add("--weights", default=None, help="demo model folder or pretraining checkpoint (default: the shipped model)")
    add("--no-description", action="store_true", help="leave the detailed description out of the subject prompts")
    add("--personalize-steps", type=int, help="DreamBooth optimizer steps")
    add("--rl-epochs", type=int, help="RL epochs (sample -> reward -> train)")
    add("--identifier-ratio", type=float, help="share of RL prompts with the identifier (the rest without)")
    add("--eval-per-prompt", type=int, help="images per prompt when scoring the models")
    add("--threads", type=int, default=DEMO_THREADS, help=f"torch CPU threads (default {DEMO_THREADS})")


def config_from_args(args: argparse.Namespace):
    from ..demo.settings import RECIPES, DemoConfig, quick_config

    if args.quick and args.recipe != "default":
        raise ValueError(f"--quick is a smoke test of the default settings; leave out --recipe {args.recipe}")
    config = quick_config(args.seed, args.weights) if args.quick else DemoConfig(seed=args.seed, weights=args.weights)
    config = RECIPES[args.recipe](config)
    config = replace(config, detailed=not args.no_description)
    if args.personalize_steps is not None:
        config = replace(config, personalize=replace(config.personalize, steps=args.personalize_steps))
    rl = {k: v for k, v in (("epochs", args.rl_epochs), ("identifier_ratio", args.identifier_ratio)) if v is not None}
    if rl:
        config = replace(config, rl=replace(config.rl, **rl))
    if args.eval_per_prompt is not None:
        config = replace(config, evaluation=replace(config.evaluation, per_prompt=args.eval_per_prompt))
    return config


def run(args: argparse.Namespace) -> int:
    import torch

    from ..demo.pipeline import run_demo

    torch.set_num_threads(args.threads)
    config = config_from_args(args)
    started = time.perf_counter()
    report = run_demo(config, args.out, callback=lambda line: print(line, flush=True))
    print("\n" + summary_table(report.metrics["models"]))
    print(f"\nreport: {report.html} (also {report.markdown.name}); {time.perf_counter() - started:.0f} s in all")
    return 0


def summary_table(models: dict) -> str:
    """Per model and split: subject-conditional alignment (the headline), images with the subject and
    every attribute right, alignment, fidelity; the subject prompt alone as the share showing it."""
    lines = [f"{'model':<14} {'split':<8} {'subj.-cond. alignment':>21} {'subject+all':>12} {'alignment':>9} "
             f"{'fidelity':>9}"]
    for name, splits in models.items():
        for split, n in splits.items():
            if split == "alone":
                lines.append(f"{name:<14} {split:<8} subject shown in {n.get('subject_count', 0)} of {n['images']} images")
                continue
            exact = f"{n.get('subject_exact_count', 0)}/{n['images']}" if name != "base" else "-"
            headline = f"{n.get('subject_alignment', 0.0):.3f}" if name != "base" else "-"
            fidelity = f"{n['fidelity']:.3f}" if name != "base" else "-"
            lines.append(f"{name:<14} {split:<8} {headline:>21} {exact:>12} {n['alignment']:>9.3f} {fidelity:>9}")
    return "\n".join(lines)
