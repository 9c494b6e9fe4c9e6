"""Quality on the embedded demo world: the shape of InstructBooth's comparison (paper, Table 1
and the ablations of Section 5.4), on prompts the model never trained on.

Variants, each over several seeds (photos, LoRA inits, training noise, evaluation seeds):
- base:             the pretrained model on the instructions without the subject;
- dreambooth:       personalized with the detailed description, instructions with "sks toy ...";
- instructbooth:    + RL on prompts with and without the identifier (the demo's settings);
- no_plain_prompts: ablation, RL on identifier prompts only (identifier_ratio 1);
- no_description:   ablation, personalization and RL without the detailed description;
- dreambooth_no_description: its starting point (shows what the description does to personalization).

Numbers: alignment (share of an instruction's attributes read back), all correct, subject
fidelity, on the 36 held-out scenes (and the 72 training scenes), as mean and spread (std)
over the seeds. Progress and per-run results are saved as they come, so a stopped run
continues where it was (`--fresh` starts over).

    OMP_NUM_THREADS=2 python benchmarks/quality.py                 # 3 seeds, shipped model
    python benchmarks/quality.py --seeds 0 1 2 3 4 --weights /path/to/last.pt

Prints a table, writes benchmarks/results/quality.json and docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.demo.pipeline import (  # noqa: E402
    DemoConfig,
    evaluate_model,
    instruct,
    load_model,
    lora_applied,
    machine_record,
    personalize_subject,
    write_reference,
)
from instructbooth.files import write_json, write_text  # noqa: E402

VARIANTS = {  # name -> (label, what it is)
    "base": ("Base model", "pretrained, instructions without the subject"),
    "dreambooth": ("DreamBooth", "personalized (with description)"),
    "instructbooth": ("InstructBooth", "+ RL, prompts with and without identifier"),
    "no_plain_prompts": ("w/o prompts without identifier", "ablation: RL identifier ratio 1"),
    "no_description": ("w/o detailed description", "ablation: personalization and RL without it"),
    "dreambooth_no_description": ("DreamBooth w/o description", "the ablation's starting point"),
}
METRICS = ("alignment", "exact", "fidelity")
SPLITS = ("heldout", "train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--weights", default=None, help="demo model folder or pretraining checkpoint (default shipped)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--work", type=Path, default=Path("/tmp/instructbooth_quality"), help="scratch folder")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "quality.md")
    parser.add_argument("--fresh", action="store_true", help="ignore results saved by an earlier run")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- one seed ---------------------------------------------------------------------------------


def summaries(evaluations: dict) -> dict:
    return {split: evaluation.summary() for split, evaluation in evaluations.items()}


def run_seed(components, seed: int, weights: str | None, work: Path, done: dict, save) -> None:
    """Every variant of one seed; each result goes into `done[variant][seed]` and is saved."""
    def record(variant: str, evaluations: dict, seconds: float) -> None:
        done.setdefault(variant, {})[str(seed)] = {**summaries(evaluations), "seconds": round(seconds, 1)}
        numbers = done[variant][str(seed)]["heldout"]
        log(f"seed {seed} {variant}: held-out alignment {numbers['alignment']:.3f} fidelity {numbers['fidelity']:.3f}")
        save()

    def missing(*variants: str) -> bool:
        return any(str(seed) not in done.get(v, {}) for v in variants)

    for detailed in (True, False):
        config = DemoConfig(seed=seed, weights=weights, detailed=detailed)
        folder = work / f"seed{seed}_{'desc' if detailed else 'nodesc'}"
        names = ("dreambooth", "instructbooth", "no_plain_prompts") if detailed else (
            "dreambooth_no_description", "no_description")
        if detailed and missing("base"):
            began = time.perf_counter()
            record("base", evaluate_model(components, None, config), time.perf_counter() - began)
        if not missing(*names):
            continue
        reference = write_reference(folder / "reference", config.reference_images, seed, detailed, config.layout)
        began = time.perf_counter()
        lora = personalize_subject(components, folder / "reference", config, lambda m: None).lora_state
        with lora_applied(components, lora):
            record(names[0], evaluate_model(components, "identifier", config), time.perf_counter() - began)
        rl_runs = [(names[1], config.rl.identifier_ratio)] + ([(names[2], 1.0)] if detailed else [])
        for name, ratio in rl_runs:
            if not missing(name):
                continue
            began = time.perf_counter()
            run = replace(config, rl=replace(config.rl, identifier_ratio=ratio))
            result = instruct(components, lora, reference, run, folder / f"rl_{name}", lambda m: None)
            with lora_applied(components, result.lora_state):
                record(name, evaluate_model(components, "identifier", run), time.perf_counter() - began)


# --- aggregation and output ---------------------------------------------------------------------


def aggregate(done: dict, seeds: list[int]) -> dict:
    """variant -> split -> metric -> {"mean", "std", "values"} over the seeds that finished."""
    table = {}
    for variant, per_seed in done.items():
        runs = [per_seed[str(s)] for s in seeds if str(s) in per_seed]
        table[variant] = {split: {m: spread([r[split][m] for r in runs]) for m in METRICS} for split in SPLITS}
        table[variant]["seeds"] = len(runs)
    return table


def spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "values": values}


def claims(table: dict, done: dict, seeds: list[int]) -> list[str]:
    """The paper's claims, each checked per seed on held-out prompts."""
    def per_seed(variant: str, metric: str) -> dict[int, float]:
        return {s: done[variant][str(s)]["heldout"][metric] for s in seeds if str(s) in done.get(variant, {})}

    def compare(text: str, a: str, b: str, metric: str, better: bool = True) -> str:
        left, right = per_seed(a, metric), per_seed(b, metric)
        common = sorted(set(left) & set(right))
        wins = sum((left[s] > right[s]) == better and left[s] != right[s] for s in common)
        verdict = "holds" if common and wins == len(common) else "holds in part" if wins else "does not hold"
        return (f"{text}: {verdict} ({wins}/{len(common)} seeds; {metric} {table[a]['heldout'][metric]['mean']:.3f} "
                f"vs {table[b]['heldout'][metric]['mean']:.3f})")

    lines = [
        compare("Personalization overfits (DreamBooth alignment below the base model's)", "dreambooth", "base",
                "alignment", better=False),
        compare("RL raises alignment (InstructBooth above DreamBooth)", "instructbooth", "dreambooth", "alignment"),
        compare("Prompts without the identifier help RL (InstructBooth above the ablation)", "instructbooth",
                "no_plain_prompts", "alignment"),
        compare("The detailed description helps (InstructBooth above the ablation)", "instructbooth", "no_description",
                "alignment"),
        compare("The detailed description helps personalization (subject fidelity)", "dreambooth",
                "dreambooth_no_description", "fidelity"),
    ]
    align = {v: table[v]["heldout"]["alignment"]["mean"] for v in ("base", "dreambooth", "instructbooth")}
    lost = align["base"] - align["dreambooth"]
    if lost > 0:
        back = (align["instructbooth"] - align["dreambooth"]) / lost
        lines.append(f"Share of the alignment lost to personalization that RL brings back: {back:.0%} "
                     f"(base {align['base']:.3f}, DreamBooth {align['dreambooth']:.3f}, "
                     f"InstructBooth {align['instructbooth']:.3f})")
    db, ib = table["dreambooth"]["heldout"]["fidelity"]["mean"], table["instructbooth"]["heldout"]["fidelity"]["mean"]
    kept = "holds" if ib >= 0.8 * db else "does not hold"
    lines.append(f"Subject fidelity stays high after RL (at least 80% of DreamBooth's): {kept} ({ib:.3f} vs {db:.3f})")
    return lines


def markdown(table: dict, lines: list[str], meta: dict) -> str:
    out = ["# Quality on the embedded demo world", "",
           "The shape of InstructBooth's comparison (paper Table 1 and Section 5.4) on the demo world of "
           "`instructbooth demo`: held-out prompts use colour-shape pairs never seen in pretraining, personalization "
           "or RL. Alignment: share of an instruction's attributes (count, colour, shape, background) read back by the "
           "exact checker; all correct: all of them; subject fidelity: likeness of the striped diamond (0-1). "
           f"Mean ± std over {meta['seeds_done']} seeds ({', '.join(map(str, meta['seeds']))}); each seed changes the "
           "photos, LoRA inits, training noise and evaluation seeds. Made by `benchmarks/quality.py`.", ""]
    for split, title in (("heldout", "Held-out prompts (36 scenes)"), ("train", "Training prompts (72 scenes)")):
        out += [f"## {title}", "", "| Variant | What | Alignment | All correct | Subject fidelity |", "|---|---|---|---|---|"]
        for variant, (label, what) in VARIANTS.items():
            if variant in table:
                cells = [f"{table[variant][split][m]['mean']:.3f} ± {table[variant][split][m]['std']:.3f}" for m in METRICS]
                out.append(f"| {label} | {what} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## What holds", ""] + [f"- {line}" for line in lines]
    out += ["", "## Setup", "", f"- {meta['settings']}", f"- Time: {meta['run_minutes']:.0f} min of runs (all variants and seeds, each timed as it ran; seeds can "
            f"run in parallel processes with separate --work folders), this call {meta['minutes']:.0f} min; "
            f"{meta['machine']}", ""]
    return "\n".join(out)


def print_table(table: dict) -> None:
    print(f"\n{'variant':<28} {'held-out alignment':>19} {'held-out fidelity':>18} {'train alignment':>16}")
    for variant in VARIANTS:
        if variant in table:
            h, t = table[variant]["heldout"], table[variant]["train"]
            print(f"{variant:<28} {h['alignment']['mean']:>11.3f} ± {h['alignment']['std']:.3f} "
                  f"{h['fidelity']['mean']:>10.3f} ± {h['fidelity']['std']:.3f} {t['alignment']['mean']:>8.3f} ± "
                  f"{t['alignment']['std']:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = args.work / "progress.json"
    done = {} if args.fresh or not progress.is_file() else json.loads(progress.read_text())
    started = time.perf_counter()
    components = load_model(args.weights)
    for seed in args.seeds:
        log(f"seed {seed}")
        run_seed(components, seed, args.weights, args.work, done, lambda: write_json(progress, done))
    table = aggregate(done, args.seeds)
    lines = claims(table, done, args.seeds)
    config = DemoConfig()
    settings = (f"demo settings: DreamBooth {config.personalize.steps} steps (lr {config.personalize.learning_rate:g}, "
                f"rank {config.personalize.rank}); RL {config.rl.method} {config.rl.epochs} epochs x "
                f"{config.rl.samples_per_epoch} samples, identifier ratio {config.rl.identifier_ratio:g}; evaluation "
                f"{config.evaluation.per_prompt} images per prompt, {config.evaluation.steps} sampler steps")
    machine = machine_record()
    meta = {"seeds": args.seeds, "seeds_done": min(t["seeds"] for t in table.values()), "settings": settings,
            "minutes": (time.perf_counter() - started) / 60, "weights": args.weights or "shipped",
            "run_minutes": sum(r["seconds"] for per in done.values() for r in per.values()) / 60,
            "machine": f"{machine['cpus']} CPUs, {machine['torch_threads']} threads, load average {machine['load_average']}"}
    write_json(args.json, {"meta": meta, "table": table, "claims": lines, "runs": done})
    write_text(args.markdown, markdown(table, lines, meta))
    print_table(table)
    print("\n" + "\n".join(lines))
    print(f"\nwrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
