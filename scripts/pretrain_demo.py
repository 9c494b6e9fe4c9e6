"""Rebuilds the shipped demo model (instructbooth/demo/demo_model.safetensors + .json).

    python scripts/pretrain_demo.py                      # train (resumable), evaluate, write
    python scripts/pretrain_demo.py --train-only         # stop after training
    python scripts/pretrain_demo.py --stop-after-minutes 20   # one session; run again to go on

Time: the shipped model took 6000 steps of batch 64, about 45 minutes on 2 CPU cores
(0.4-0.5 s a step on a quiet machine), then about 2 minutes of evaluation (8 sampled
images per caption, 50 stochastic steps, guidance 4). Checkpoints go to
--checkpoint-dir, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.demo.model import DemoModelConfig, build_demo_components, save_demo_model  # noqa: E402
from instructbooth.demo.pretrain import PretrainConfig, pretrain  # noqa: E402
from instructbooth.demo.sampling import SamplerConfig  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps, help="optimizer steps in all")
    parser.add_argument("--lr", type=float, default=PretrainConfig.lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="init, data and noise seed")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/work/demo_ckpt"), help="resumable checkpoints")
    parser.add_argument("--out", type=Path, default=REPO / "instructbooth" / "demo", help="folder for the model files")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--stop-after-minutes", type=float, default=None, help="end this session early")
    parser.add_argument("--train-only", action="store_true", help="do not evaluate or write the model")
    parser.add_argument("--eval-per-caption", type=int, default=8, help="sampled images per caption to score")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model_config = DemoModelConfig()
    config = replace(PretrainConfig(), steps=args.steps, lr=args.lr, seed=args.seed)
    components = build_demo_components(model_config, seed=args.seed)
    stop = args.stop_after_minutes * 60 if args.stop_after_minutes else None
    result, ema = pretrain(config, components, args.checkpoint_dir, log=log, stop_after_seconds=stop)
    log(f"trained {result.step}/{config.steps} steps in {result.seconds / 60:.1f} min")
    if args.train_only or result.step < config.steps:
        return 0
    ema.copy_to_model()
    return finish(components, model_config, config, result, args)


def finish(components, model_config, config, result, args) -> int:
    """Scores the EMA model on held-in and held-out captions and writes the model files."""
    from instructbooth.demo.evaluate import evaluate_splits

    sampler = SamplerConfig()
    started = time.perf_counter()
    accuracy = evaluate_splits(components, sampler, per_caption=args.eval_per_caption, seed=args.seed)
    seconds = time.perf_counter() - started
    for split, scores in accuracy.items():
        log(f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    card = {
        "sampler": asdict(sampler),
        "accuracy": accuracy,
        "evaluation": {"per_caption": args.eval_per_caption, "seed": args.seed, "minutes": round(seconds / 60, 2)},
        "pretraining": {**asdict(config), "minutes": round(result.seconds / 60, 1), "threads": args.threads},
    }
    path = save_demo_model(components, args.out, model_config, card)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
