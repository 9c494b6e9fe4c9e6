"""RL epochs of the demo with its batches one at a time and two at a time (RLConfig.parallel_batches).

Both runs start from the same model and seed and must end with the same LoRA, bit for bit; the
table gives each epoch's sampling and training seconds (one torch thread per batch).

    python benchmarks/threads.py                  # 2 epochs of the demo's RL, 1 vs 2 batches at a time
    python benchmarks/threads.py --epochs 3 --workers 1 2 3
    python benchmarks/threads.py --sample-batches 2        # 64 samples an epoch (a quicker check, e.g. under load)

Prints a table and writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.demo.instructions import DemoReward  # noqa: E402
from instructbooth.demo.pipeline import load_model, rl_prompts  # noqa: E402
from instructbooth.demo.settings import DemoConfig  # noqa: E402
from instructbooth.files import write_json  # noqa: E402
from instructbooth.rl.trainer import train_rl  # noqa: E402


def run(workers: int, epochs: int, sample_batches: int) -> tuple[dict, list[dict], float]:
    config = DemoConfig()
    settings = replace(config.rl_settings(), epochs=epochs, heldout_every=0, parallel_batches=workers,
                       sample_batches=sample_batches, gradient_accumulation_steps=2 * sample_batches)
    began = time.perf_counter()
    result = train_rl(load_model(), DemoReward(), rl_prompts(config.detailed, config.layout), settings)
    return result.lora_state, [m["time"] for m in result.metrics], time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sample-batches", type=int, default=8, help="batches of 32 samples per epoch (default 8)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "threads.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, reference = [], None
    for workers in args.workers:
        lora, times, seconds = run(workers, args.epochs, args.sample_batches)
        reference = reference or lora
        same = all(torch.equal(reference[k], lora[k]) for k in reference)
        last = times[-1]  # the first epoch includes warm-up
        rows.append({"workers": workers, "seconds": round(seconds, 1), "last_epoch": {k: round(v, 2) for k, v in last.items()},
                     "same_lora_as_first": same})
    print(f"{'batches at once':>15} {'run s':>7} {'epoch s':>8} {'sample s':>9} {'train s':>8} {'same LoRA':>10}")
    for r in rows:
        t = r["last_epoch"]
        print(f"{r['workers']:>15} {r['seconds']:>7.1f} {t['total']:>8.1f} {t['sample']:>9.1f} {t['train']:>8.1f} "
              f"{str(r['same_lora_as_first']):>10}")
    write_json(args.json, {"epochs": args.epochs, "samples_per_epoch": 32 * args.sample_batches,
                           "cpus": os.cpu_count(), "load": os.getloadavg(), "rows": rows})
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
