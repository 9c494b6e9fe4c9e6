"""Lee et al. 2023 end to end in the demo world: learn a reward from binary labels, fine-tune with
it the way the paper does (method "lee": one offline round, weights = the learned reward, beta on
pre-training data), and measure alignment on held-out captions with the exact checker.

Per seed: the shipped demo model samples `--per-seen` images of each of the 72 held-in captions;
the checker labels them (good = every attribute right: the "human"); a reward head learns the
labels on frozen demo features (labels only, lambda 0, the variant that ranked images in
docs/reward_learning.md; and lambda 0.5 for comparison). Each reward then fine-tunes a LoRA on
the base model with `train_rl(method="lee")` on held-in captions: one round of
`--round` samples, `--epochs` passes, beta `--beta` on ground-truth world images with their
captions (the demo world's pre-training data, as Lee et al. use LAION). Held-out alignment (share
of attributes right) and all-right share are read by the checker on `--per-unseen` samples of
each of the 36 held-out captions at fixed seeds, for the base model and each tuned model.

    python benchmarks/lee_finetune.py --seeds 0 1 2

Prints a table and writes benchmarks/results/lee_finetune.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.demo.checker import AlignmentReward  # noqa: E402
from instructbooth.demo.checker import score as check  # noqa: E402
from instructbooth.demo.evaluate import SamplerConfig, sample_world  # noqa: E402
from instructbooth.demo.pipeline import load_model  # noqa: E402
from instructbooth.images import tensor_to_pil  # noqa: E402
from instructbooth.demo.reward_features import DemoBackbone  # noqa: E402
from instructbooth.demo.settings import DEMO_RL  # noqa: E402
from instructbooth.demo.world import captions, sample_batch  # noqa: E402
from instructbooth.files import write_json  # noqa: E402
from instructbooth.lora import lora_merged  # noqa: E402
from instructbooth.prompts import DrawnPrompt, Subject  # noqa: E402
from instructbooth.reward_learning import LearnedReward, RewardTrainConfig, train_reward_head  # noqa: E402
from instructbooth.rl.trainer import train_rl  # noqa: E402

from reward_learning import world_perturbations  # noqa: E402

REWARDS = {"labels_only": 0.0, "with_aux": 0.5}  # learned rewards: name -> lambda of the prompt-classification loss
ORACLE = "checker"  # the control: the same fine-tuning with the exact checker's alignment as the reward
SAMPLER = dict(steps=10, guidance=2.0, eta=1.0)  # how RL samples the demo model (DEMO_RL)


class WorldCaptions:
    """The prompt source `train_rl` draws from, for world captions without a subject: every drawn
    prompt is a held-in caption, scored against itself (duck-types RLPrompts)."""

    def __init__(self, texts: list[str]):
        self.templates = tuple(texts)
        self.heldout = ()
        self.subject = Subject("none", "scene")

    def draw(self, count, identifier_ratio, generator, use_description=False, reward_plain_prompt=True):
        picks = torch.randint(len(self.templates), (count,), generator=generator).tolist()
        return [DrawnPrompt(self.templates[i], self.templates[i], i, "plain") for i in picks]

    def heldout_prompts(self, *args):
        return []


def labelled(model, prompts: list[str], seed: int, steps: int):
    images = sample_world(model, prompts, SamplerConfig(steps=steps, guidance=SAMPLER["guidance"]), seed)
    results = [check(image, prompt) for image, prompt in zip(images, prompts)]
    good = torch.tensor([float(all(r.values())) for r in results])
    share = torch.tensor([float(np.mean(list(r.values()))) for r in results])
    return images, good, share


def write_pretraining_images(folder: Path, count: int, seed: int) -> None:
    """Ground-truth world images of held-in captions, each PNG with its caption beside it."""
    images, texts = sample_batch(count, np.random.default_rng(seed), split="train")
    for i, (image, text) in enumerate(zip(images, texts)):
        tensor_to_pil(torch.from_numpy(image)).save(folder / f"world_{i:04d}.png")
        (folder / f"world_{i:04d}.txt").write_text(text + "\n")


def held_out_alignment(model, lora, seed: int, per_unseen: int) -> dict[str, float]:
    prompts = [c for c in captions("heldout") for _ in range(per_unseen)]
    with lora_merged(model, lora):
        _, good, share = labelled(model, prompts, 3000 + seed, SAMPLER["steps"])
    return {"alignment": float(share.mean()), "all_right": float(good.mean()), "images": len(prompts)}


def run_seed(seed: int, args) -> dict:
    began = time.time()
    model = load_model()
    backbone = DemoBackbone(model)
    seen = [c for c in captions("train") for _ in range(args.per_seen)]
    images, good, _ = labelled(model, seen, 1000 + seed, SAMPLER["steps"])
    features, valid = backbone.pair_features(images, [[p, *world_perturbations(p)] for p in seen])
    record = {"seed": seed, "labelled": len(seen), "good_share": float(good.mean()),
              "base": held_out_alignment(model, None, seed, args.per_unseen), "tuned": {}}
    config = replace(DEMO_RL, method="lee", seed=seed, epochs=args.epochs, sample_batch_size=16,
                     sample_batches=args.round // 16, images_per_prompt=1, train_batch_size=16,
                     gradient_accumulation_steps=1, rwr_beta=args.beta, heldout_every=0, identifier_ratio=0.0)
    with tempfile.TemporaryDirectory() as folder:
        write_pretraining_images(Path(folder), args.pretraining_images, seed)
        for name, lam in REWARDS.items():
            trained = train_reward_head(features, valid, good, RewardTrainConfig(num_prompts=10, epochs=60, seed=seed,
                                                                                 lam=lam), backbone.image_feature_size)
            reward = LearnedReward(trained.head, backbone)
            result = train_rl(model, reward, WorldCaptions(captions("train")), config, regulariser_images=folder)
            record["tuned"][name] = {**held_out_alignment(model, result.lora_state, seed, args.per_unseen),
                                     "round_reward_mean": result.metrics[0]["reward"]["all"]["mean"]}
        if args.oracle:
            result = train_rl(model, AlignmentReward(), WorldCaptions(captions("train")), config,
                              regulariser_images=folder)
            record["tuned"][ORACLE] = held_out_alignment(model, result.lora_state, seed, args.per_unseen)
    record["seconds"] = round(time.time() - began, 1)
    return record


def mean_se(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    se = array.std(ddof=1) / np.sqrt(len(array)) if len(array) > 1 else float("nan")
    return f"{array.mean():.3f} ± {se:.3f}" if len(array) > 1 else f"{array.mean():.3f}"


def table(records: list[dict]) -> str:
    rows = ["| model (held-out captions) | alignment | all four right |", "|---|---|---|"]
    rows.append(f"| base | {mean_se([r['base']['alignment'] for r in records])} | "
                f"{mean_se([r['base']['all_right'] for r in records])} |")
    labels = {**{name: f"Lee RWR, learned reward λ={lam}" for name, lam in REWARDS.items()},
              ORACLE: "Lee RWR, the checker's alignment as reward (control)"}
    for name, label in labels.items():
        if all(name in r["tuned"] for r in records):
            rows.append(f"| {label} | {mean_se([r['tuned'][name]['alignment'] for r in records])} | "
                        f"{mean_se([r['tuned'][name]['all_right'] for r in records])} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-seen", type=int, default=16, help="labelled samples per held-in caption (72)")
    parser.add_argument("--per-unseen", type=int, default=8, help="evaluation samples per held-out caption (36)")
    parser.add_argument("--round", type=int, default=512, help="samples in Lee's one offline round (multiple of 16)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the round")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the pre-training denoising loss")
    parser.add_argument("--pretraining-images", type=int, default=256, help="ground-truth world images for beta")
    parser.add_argument("--oracle", action="store_true", help="also fine-tune on the checker's alignment (control)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lee_finetune.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    records = []
    for seed in args.seeds:
        records.append(run_seed(seed, args))
        print(f"seed {seed}: {records[-1]['seconds']} s", flush=True)
    print(table(records))
    write_json(Path(args.out), {"settings": vars(args), "records": records, "table": table(records)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
