"""Lee et al. 2023's reward-learning ablation in the embedded demo world, with the exact checker
as the human.

Per seed:
1. the shipped demo model samples `--per-seen` images of each of the 72 held-in captions
   (10 DDIM steps, eta 1); the checker labels each good (count, colour, shape and background
   all right) or bad. A stratified 20% of these images is held out: "seen prompts" accuracy;
2. it samples `--per-unseen` images of each of the 36 held-out captions (colour-shape pairs the
   generator never trained on, and prompts the reward never saw): "unseen prompts" accuracy;
3. a reward head is learned on frozen demo features (demo/reward_features.py) with and without
   the prompt-classification loss (λ = 0.5, N = 10: the true caption and its 9 one-attribute
   perturbations; a third variant counts the loss on every image, not only the good ones);
4. best-of-N on the held-out captions: the unseen images of each caption are split into groups
   of N; from each group the learned reward picks one, a random pick and the checker's own best
   (an upper bound) are compared with the base model (the mean over all samples = one sample).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/reward_learning.py             # seeds 0 1 2
    python benchmarks/reward_learning.py --seeds 0 --per-seen 8 --per-unseen 8     # a quick look

Prints a table and writes benchmarks/results/reward_learning.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.demo.checker import score as check  # noqa: E402
from instructbooth.demo.pipeline import load_model  # noqa: E402
from instructbooth.demo.reward_features import DemoBackbone  # noqa: E402
from instructbooth.demo.evaluate import SamplerConfig, sample_world  # noqa: E402
from instructbooth.demo.world import BACKGROUNDS, COLOURS, SHAPES, Scene, captions, parse_caption  # noqa: E402
from instructbooth.files import write_json  # noqa: E402
from instructbooth.reward_learning import (  # noqa: E402
    LearnedReward,
    RewardTrainConfig,
    evaluate_head,
    train_reward_head,
)

VARIANTS = {  # name -> (what, config changes)
    "labels_only": ("MSE to the labels only (λ = 0)", {"lam": 0.0}),
    "with_aux_small": ("+ prompt classification, good images (λ = 0.1)", {"lam": 0.1}),
    "with_aux": ("+ prompt classification, good images (λ = 0.5)", {"lam": 0.5}),
    "with_aux_all": ("+ prompt classification, every image (λ = 0.5)", {"lam": 0.5, "aux_on": "all"}),
}
METRICS = ("accuracy", "balanced_accuracy", "auc", "brier", "ece")


def world_perturbations(caption: str) -> list[str]:
    """The caption's one-attribute edits: every other count, colour, shape and background (9)."""
    scene = parse_caption(caption)
    edits = [replace(scene, count=n) for n in (1, 2, 3) if n != scene.count]
    edits += [replace(scene, colour=c) for c in COLOURS if c != scene.colour]
    edits += [replace(scene, shape=s) for s in SHAPES if s != scene.shape]
    edits += [replace(scene, background=b) for b in BACKGROUNDS if b != scene.background]
    return [Scene.caption(e) for e in edits]


def sample_labelled(model, prompts: list[str], seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, good labels (every attribute right) and attribute shares of one sample per prompt."""
    images = sample_world(model, prompts, SamplerConfig(steps=steps), seed)
    results = [check(image, prompt) for image, prompt in zip(images, prompts)]
    good = torch.tensor([float(all(r.values())) for r in results])
    share = torch.tensor([float(np.mean(list(r.values()))) for r in results])
    return images, good, share


def best_of_n(scores: torch.Tensor, good: torch.Tensor, share: torch.Tensor, groups: torch.Tensor,
              generator: torch.Generator) -> dict[str, dict[str, float]]:
    """Per group of N candidates: the learned reward's pick, a random pick, the checker's best."""
    picks = {"learned": [], "random": [], "oracle": []}
    for group in groups:
        picks["learned"].append(int(group[scores[group].argmax()]))
        picks["random"].append(int(group[torch.randint(len(group), (1,), generator=generator)]))
        picks["oracle"].append(int(group[(good[group] + 1e-3 * share[group]).argmax()]))
    result = {name: {"all_right": float(good[idx].mean()), "alignment": float(share[idx].mean())}
              for name, idx in ((k, torch.tensor(v)) for k, v in picks.items())}
    result["base"] = {"all_right": float(good.mean()), "alignment": float(share.mean())}
    return result


def within_prompt_pair_accuracy(scores: torch.Tensor, share: torch.Tensor, groups: torch.Tensor) -> float:
    """Over pairs of images of the same prompt whose checker alignment differs: the share the
    reward orders the same way (0.5 = chance). This is what best-of-N needs."""
    agree, total = 0.0, 0
    for group in groups:
        s, a = scores[group], share[group]
        differ = a[:, None] != a[None]
        agree += float(((s[:, None] > s[None]) == (a[:, None] > a[None]))[differ].sum())
        total += int(differ.sum())
    return agree / total if total else float("nan")


def run_seed(model, backbone: DemoBackbone, seed: int, args) -> dict:
    start = time.time()
    seen_prompts = [c for c in captions("train") for _ in range(args.per_seen)]
    unseen_prompts = [c for c in captions("heldout") for _ in range(args.per_unseen)]
    seen_images, seen_good, _ = sample_labelled(model, seen_prompts, 1000 + seed, args.steps)
    unseen_images, unseen_good, unseen_share = sample_labelled(model, unseen_prompts, 2000 + seed, args.steps)
    sampled = time.time() - start
    seen_candidates = [[p, *world_perturbations(p)] for p in seen_prompts]
    unseen_candidates = [[p, *world_perturbations(p)] for p in unseen_prompts]
    seen_features, seen_valid = backbone.pair_features(seen_images, seen_candidates)
    unseen_features, unseen_valid = backbone.pair_features(unseen_images, unseen_candidates)
    groups = torch.arange(len(unseen_prompts)).reshape(-1, args.n)  # prompts repeat per_unseen times in a row
    record = {"seed": seed, "seen_images": len(seen_prompts), "unseen_images": len(unseen_prompts),
              "seen_good_share": float(seen_good.mean()), "unseen_good_share": float(unseen_good.mean()),
              "sampling_s": round(sampled, 1), "variants": {}}
    for name, (_, changes) in VARIANTS.items():
        config = RewardTrainConfig(num_prompts=10, epochs=args.epochs, seed=seed, **changes)
        trained = train_reward_head(seen_features, seen_valid, seen_good, config, backbone.image_feature_size)
        reward = LearnedReward(trained.head, backbone)
        scores = reward(unseen_images, unseen_prompts)  # through the reward protocol
        unseen = evaluate_head(trained.head, unseen_features, unseen_valid, unseen_good)
        unseen["within_prompt_pairs"] = within_prompt_pair_accuracy(scores, unseen_share, groups)
        record["variants"][name] = {
            "seen": trained.metrics["validation"],
            "unseen": unseen,
            "best_of_n": best_of_n(scores, unseen_good, unseen_share, groups, torch.Generator().manual_seed(seed)),
        }
    record["seconds"] = round(time.time() - start, 1)
    return record


def mean_se(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), se


def summarise(records: list[dict]) -> dict:
    summary: dict = {}
    for name in VARIANTS:
        entry = summary.setdefault(name, {})
        for split in ("seen", "unseen"):
            for metric in (*METRICS, "prompt_accuracy", "within_prompt_pairs"):
                values = [r["variants"][name][split].get(metric, float("nan")) for r in records]
                entry[f"{split}_{metric}"] = mean_se(values)
        for pick in ("learned", "random", "oracle", "base"):
            for metric in ("all_right", "alignment"):
                entry[f"bon_{pick}_{metric}"] = mean_se([r["variants"][name]["best_of_n"][pick][metric] for r in records])
    return summary


def fmt(pair: tuple[float, float]) -> str:
    mean, se = pair
    return f"{mean:.3f}" if np.isnan(se) else f"{mean:.3f} ± {se:.3f}"


def tables(summary: dict, n: int) -> str:
    lines = ["| Reward | seen acc | seen bal. acc | seen AUC | unseen acc | unseen bal. acc | unseen AUC | "
             "unseen Brier | unseen ECE | unseen within-prompt pairs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (what, _) in VARIANTS.items():
        s = summary[name]
        lines.append(f"| {what} | " + " | ".join(fmt(s[k]) for k in (
            "seen_accuracy", "seen_balanced_accuracy", "seen_auc", "unseen_accuracy", "unseen_balanced_accuracy",
            "unseen_auc", "unseen_brier", "unseen_ece", "unseen_within_prompt_pairs")) + " |")
    lines += ["", f"| Best-of-{n} on held-out captions (exact checker) | every attribute right | alignment |",
              "|---|---|---|"]
    first = summary[next(iter(VARIANTS))]
    lines.append(f"| base model (one sample) | {fmt(first['bon_base_all_right'])} | {fmt(first['bon_base_alignment'])} |")
    lines.append(f"| random pick of {n} | {fmt(first['bon_random_all_right'])} | {fmt(first['bon_random_alignment'])} |")
    for name, (what, _) in VARIANTS.items():
        s = summary[name]
        lines.append(f"| learned reward: {what} | {fmt(s['bon_learned_all_right'])} | {fmt(s['bon_learned_alignment'])} |")
    lines.append(f"| the checker's own pick (upper bound) | {fmt(first['bon_oracle_all_right'])} | "
                 f"{fmt(first['bon_oracle_alignment'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-seen", type=int, default=28, help="samples per held-in caption (72 captions)")
    parser.add_argument("--per-unseen", type=int, default=16, help="samples per held-out caption (36 captions)")
    parser.add_argument("--n", type=int, default=8, help="best-of-N group size (divides --per-unseen)")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps")
    parser.add_argument("--epochs", type=int, default=60, help="reward-head training epochs")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reward_learning.json"))
    args = parser.parse_args()
    if args.per_unseen % args.n:
        parser.error("--n must divide --per-unseen")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.time()
    model = load_model()
    backbone = DemoBackbone(model)
    records = []
    for seed in args.seeds:
        records.append(run_seed(model, backbone, seed, args))
        print(f"seed {seed}: {records[-1]['seconds']} s (sampling {records[-1]['sampling_s']} s)", flush=True)
    summary = summarise(records)
    table = tables(summary, args.n)
    print(table)
    write_json(args.out, {"settings": {k: v for k, v in vars(args).items() if k != "out"},
                          "variants": {k: v[0] for k, v in VARIANTS.items()}, "per_seed": records,
                          "summary": {k: {m: list(v) for m, v in s.items()} for k, s in summary.items()},
                          "table_markdown": table, "seconds": round(time.time() - started, 1),
                          "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())})
    print(f"wrote {args.out} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
