"""Do DDPO's advantages get per-prompt baselines? The share of samples that fall back, by config.

Replays the trainer's own prompt draws (`collect.draw_epoch_prompts`, seeded as in
training) for many epochs on the shipped prompt sets (actions + interactions), gives
every sample a random reward, and turns the rewards into advantages the way the trainer
does (`make_algorithm(config).signal`). A sample "falls back" when its advantage did not come
from its own prompt's statistics: the tracker had fewer than `tracker_min_count`
rewards of the prompt, or a group had one image. No model is needed; it takes seconds.

    python benchmarks/advantages.py                # the default config and the variants below
    python benchmarks/advantages.py --epochs 100

Prints a table and writes benchmarks/results/advantages.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.files import write_json  # noqa: E402
from instructbooth.prompts import IDENTIFIER, RLPrompts, Subject  # noqa: E402
from instructbooth.rl.advantages import PerPromptStatTracker  # noqa: E402
from instructbooth.rl.collect import draw_epoch_prompts  # noqa: E402
from instructbooth.rl.config import RLConfig  # noqa: E402
from instructbooth.seeds import generator_for  # noqa: E402
from instructbooth.rl.algorithms import make_algorithm  # noqa: E402

DEFAULT = RLConfig()
# The defaults before this benchmark existed: tracker advantages, 8 samples of 8 prompts, ratio 0.5.
PREVIOUS = replace(DEFAULT, advantage="tracker", images_per_prompt=1, sample_batches=2, identifier_ratio=0.5,
                   gradient_accumulation_steps=1)
CONFIGS = {
    "previous default (tracker, 8 samples/epoch, 1 image/prompt)": PREVIOUS,
    "tracker, min count 2": replace(PREVIOUS, tracker_min_count=2),
    "tracker, 16 samples/epoch, 4 images/prompt": replace(DEFAULT, advantage="tracker"),
    "default (group, 16 samples/epoch, 4 images/prompt)": DEFAULT,
    "batch": replace(DEFAULT, advantage="batch"),
}


def fallback_shares(config: RLConfig, prompts: RLPrompts, epochs: int) -> list[float]:
    """The per-epoch fallback share of a run of `config` with random rewards."""
    tracker = PerPromptStatTracker(config.tracker_buffer, config.tracker_min_count)
    shares = []
    for epoch in range(epochs):
        generator = generator_for(config.seed, epoch, "prompts")
        drawn = draw_epoch_prompts(prompts, config, config.samples_per_epoch, generator)
        rewards = torch.rand(len(drawn), generator=generator_for(config.seed, epoch, "rewards"))
        _, share = make_algorithm(config).signal(tracker, SimpleNamespace(drawn=drawn, rewards=rewards))
        shares.append(share)
    return shares


def identifier_share(config: RLConfig, prompts: RLPrompts, epochs: int) -> float:
    """Share of samples drawn with the identifier over `epochs` epochs."""
    flags = []
    for epoch in range(epochs):
        drawn = draw_epoch_prompts(prompts, config, config.samples_per_epoch, generator_for(config.seed, epoch, "prompts"))
        flags += [d.group == IDENTIFIER for d in drawn]
    return sum(flags) / len(flags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50, help="epochs replayed per config (default 50)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "advantages.json")
    args = parser.parse_args(argv)
    prompts = RLPrompts.default(Subject("sks", "plushie"))
    rows = []
    for name, config in CONFIGS.items():
        shares = fallback_shares(config, prompts, args.epochs)
        rows.append({"config": name, "advantage": config.advantage, "samples_per_epoch": config.samples_per_epoch,
                     "images_per_prompt": config.images_per_prompt, "tracker_min_count": config.tracker_min_count,
                     "fallback_share_mean": sum(shares) / len(shares), "fallback_share_last": shares[-1],
                     "identifier_share": identifier_share(config, prompts, args.epochs)})
    print(f"{args.epochs} epochs, {len(prompts.templates)} templates x with/without identifier "
          f"({2 * len(prompts.templates)} prompt keys)\n")
    print("| config | samples/epoch | fallback share, mean | fallback share, last epoch | identifier share |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['samples_per_epoch']} | {r['fallback_share_mean']:.3f} | "
              f"{r['fallback_share_last']:.3f} | {r['identifier_share']:.3f} |")
    write_json(args.json, {"epochs": args.epochs, "templates": len(prompts.templates), "rows": rows})
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
