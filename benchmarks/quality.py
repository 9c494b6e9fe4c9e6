"""Quality on the embedded demo world: does InstructBooth give back the instruction while the
subject stays? Held-out prompts (colour-shape pairs the model never trained on), seeds 0-4.

Variants, per seed (photos, LoRA inits, training noise, evaluation seeds):
- base:             the pretrained model on the instructions without the subject;
- dreambooth:       personalized, the same instructions with "sks toy ...";
- instructbooth:    + RL with the method's reward (class-noun prompt, no subject term);
- optional (--variants): subject_weighted (the reward with a 0.5 subject term, a labelled
  variant), no_plain_prompts (RL identifier ratio 1).

--recipe picks the demo settings every variant runs with: "default" (DemoConfig: prior
preservation on the training scenes, RL on 256 samples per update, guidance 1) or "no_prior"
(demo/settings.py: no prior preservation, RL on 64 samples per update, guidance 2), whose results
go to quality_no_prior.json / .md.

Headline: subject-conditional alignment, per image the share of the instruction's attributes
that hold, counted only where the subject is there (score_image). Also: the share of images
with the subject and every attribute right, alignment, subject fidelity, and how often the
subject prompt alone shows the subject. The bar (issue 20), mean over the seeds:
InstructBooth's subject-conditional alignment >= half the base model's alignment and >= 3x
DreamBooth's; above DreamBooth on every seed with a gain >= 3 standard errors (per seed, the
standard error of the per-image paired difference); fidelity >= 0.9x DreamBooth's.

Progress is saved per variant and seed, so a stopped run continues (`--fresh` starts over).

    python benchmarks/quality.py                                   # seeds 0-4, shipped model
    python benchmarks/quality.py --seeds 0 --variants subject_weighted
    python benchmarks/quality.py --recipe no_prior         # docs/quality_no_prior.md

Prints a table, writes benchmarks/results/quality.json and docs/quality.md (default recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads collapse under load
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.commands.demo import DEMO_THREADS  # noqa: E402
from instructbooth.demo.evaluate import ALONE, evaluate_model  # noqa: E402
from instructbooth.demo.pipeline import (  # noqa: E402
    instruct,
    load_model,
    machine_record,
    personalize_subject,
    write_reference,
)
from instructbooth.demo.report import prior_line  # noqa: E402
from instructbooth.demo.settings import RECIPES, DemoConfig, subject_weighted  # noqa: E402
from instructbooth.lora import lora_merged  # noqa: E402
from instructbooth.files import write_json, write_text  # noqa: E402

VARIANTS = {  # name -> (label, what it is)
    "base": ("Base model", "pretrained, instructions without the subject"),
    "dreambooth": ("DreamBooth", "personalized, instructions with \"sks toy\""),
    "instructbooth": ("InstructBooth", "+ RL, the method's reward (class-noun prompt)"),
    "subject_weighted": ("InstructBooth, subject-weighted reward", "variant: reward 0.5 x subject + 0.5 x instruction"),
    "no_plain_prompts": ("InstructBooth w/o prompts without identifier", "ablation: RL identifier ratio 1"),
}
DEFAULT_VARIANTS = ("base", "dreambooth", "instructbooth")
OPTIONAL = ("subject_weighted", "no_plain_prompts")
METRICS = ("subject_alignment", "subject_exact", "alignment", "fidelity", "subject")
SPLITS = ("heldout", "train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    parser.add_argument("--variants", nargs="*", default=[], choices=OPTIONAL, help="optional variants to add")
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES),
                        help="demo settings every variant runs with (default: the demo's own)")
    parser.add_argument("--weights", default=None, help="demo model folder or pretraining checkpoint (default shipped)")
    parser.add_argument("--threads", type=int, default=DEMO_THREADS, help=f"torch CPU threads (default {DEMO_THREADS}, "
                        "as instructbooth demo)")
    parser.add_argument("--work", type=Path, help="scratch folder (default /tmp/instructbooth_quality[_RECIPE])")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/quality[_RECIPE].json")
    parser.add_argument("--markdown", type=Path, help="default docs/quality[_RECIPE].md")
    parser.add_argument("--fresh", action="store_true", help="ignore results saved by an earlier run")
    parser.add_argument("--no-write", action="store_true", help="run and save progress, write no report")
    args = parser.parse_args(argv)
    suffix = "" if args.recipe == "default" else f"_{args.recipe}"
    args.work = args.work or Path(f"/tmp/instructbooth_quality{suffix}")
    args.json = args.json or REPO / "benchmarks" / "results" / f"quality{suffix}.json"
    args.markdown = args.markdown or REPO / "docs" / f"quality{suffix}.md"
    return args


def recipe_config(recipe: str, seed: int, weights: str | None) -> DemoConfig:
    return RECIPES[recipe](DemoConfig(seed=seed, weights=weights))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- one seed ---------------------------------------------------------------------------------


def per_image(evaluation) -> dict[str, list[float]]:
    """The held-out per-image scores kept for paired comparisons (same seeds for every model)."""
    return {m: [round(s[m], 4) for s in evaluation.scores] for m in ("subject_alignment", "fidelity")}


def rl_variant(config: DemoConfig, name: str) -> DemoConfig:
    if name == "subject_weighted":
        return subject_weighted(config)
    if name == "no_plain_prompts":
        return replace(config, rl=replace(config.rl, identifier_ratio=1.0))
    return config


def run_seed(components, config: DemoConfig, variants: list[str], work: Path, done: dict, save) -> None:
    """Every variant of one seed; each result goes into `done[variant][seed]` and is saved."""
    def record(variant: str, evaluations: dict, seconds: float) -> None:
        entry = {split: e.summary() for split, e in evaluations.items()}
        entry["heldout_images"] = per_image(evaluations["heldout"])
        done.setdefault(variant, {})[str(seed)] = {**entry, "seconds": round(seconds, 1)}
        h = entry["heldout"]
        log(f"seed {seed} {variant}: held-out subject-conditional alignment {h['subject_alignment']:.3f}, "
            f"subject + every attribute {h['subject_exact_count']}/{h['images']}, alignment {h['alignment']:.3f}, "
            f"fidelity {h['fidelity']:.3f}")
        save()

    def missing(*names: str) -> bool:
        return any(str(seed) not in done.get(v, {}) for v in names)

    seed = config.seed
    folder = work / f"seed{seed}"
    if missing("base"):
        began = time.perf_counter()
        record("base", evaluate_model(components, None, config), time.perf_counter() - began)
    rl_names = [v for v in variants if v not in ("base", "dreambooth")]
    if not missing("dreambooth", *rl_names):
        return
    reference = write_reference(folder / "reference", config.reference_images, seed, config.detailed, config.layout)
    began = time.perf_counter()
    lora = personalize_subject(components, folder / "reference", config, lambda m: None).lora_state
    if missing("dreambooth"):
        with lora_merged(components, lora):
            record("dreambooth", evaluate_model(components, "identifier", config), time.perf_counter() - began)
    for name in rl_names:
        if not missing(name):
            continue
        began = time.perf_counter()
        run = rl_variant(config, name)
        result = instruct(components, lora, reference, run, folder / f"rl_{name}", lambda m: None)
        with lora_merged(components, result.lora_state):
            record(name, evaluate_model(components, "identifier", run), time.perf_counter() - began)


# --- aggregation and the bar ----------------------------------------------------------------------


def aggregate(done: dict, seeds: list[int]) -> dict:
    """variant -> split -> metric -> {"mean", "se", "values", "images"} over the seeds that
    finished: the mean of the per-seed means, its standard error over seeds, n images in all."""
    table = {}
    for variant, per_seed in done.items():
        runs = [per_seed[str(s)] for s in seeds if str(s) in per_seed]
        if not runs:
            continue
        table[variant] = {split: {m: spread([r[split][m] for r in runs], sum(r[split]["images"] for r in runs))
                                  for m in METRICS} for split in SPLITS}
        if all(ALONE in r for r in runs):
            table[variant][ALONE] = {"subject_count": sum(r[ALONE]["subject_count"] for r in runs),
                                     "images": sum(r[ALONE]["images"] for r in runs)}
        table[variant]["seeds"] = [s for s in seeds if str(s) in per_seed]
    return table


def spread(values: list[float], images: int) -> dict:
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": round(float(np.mean(values)), 4), "se": round(se, 4), "values": values, "images": images}


def paired_gain(done: dict, seed: int, metric: str = "subject_alignment") -> tuple[float, float]:
    """InstructBooth minus DreamBooth on one seed's held-out images (the same prompts and
    sampler seeds): mean per-image difference and its standard error."""
    a = np.array(done["instructbooth"][str(seed)]["heldout_images"][metric])
    b = np.array(done["dreambooth"][str(seed)]["heldout_images"][metric])
    diff = a - b
    return float(diff.mean()), float(np.std(diff, ddof=1) / np.sqrt(len(diff)))


def bar(table: dict, done: dict, seeds: list[int]) -> list[dict]:
    """Each condition of the bar: what it asks, the measured value, the target, holds or not."""
    head = "subject_alignment"
    ib = table["instructbooth"]["heldout"]
    db = table["dreambooth"]["heldout"]
    base = table["base"]["heldout"]["alignment"]["mean"]
    common = [s for s in seeds if str(s) in done["instructbooth"] and str(s) in done["dreambooth"]]
    gains = {s: paired_gain(done, s) for s in common}
    worst = min((g / se if se > 0 else (np.inf if g > 0 else 0.0)) for g, se in gains.values())
    items = [
        ("InstructBooth subject-conditional alignment >= half the base model's alignment",
         ib[head]["mean"], 0.5 * base),
        ("InstructBooth subject-conditional alignment >= 3x DreamBooth's", ib[head]["mean"], 3 * db[head]["mean"]),
        ("above DreamBooth on every seed by >= 3 standard errors (smallest per-seed gain / its per-image SE)", float(worst), 3.0),
        ("InstructBooth subject fidelity >= 0.9x DreamBooth's", ib["fidelity"]["mean"], 0.9 * db["fidelity"]["mean"]),
    ]
    result = [{"condition": c, "value": round(v, 4), "target": round(t, 4), "holds": bool(v >= t)}
              for c, v, t in items]
    mean_gain = [g for g, _ in gains.values()]
    pooled_se = float(np.std(mean_gain, ddof=1) / np.sqrt(len(mean_gain))) if len(mean_gain) > 1 else 0.0
    result.append({"condition": "for comparison, not the bar: the mean gain over seeds in standard errors over seeds",
                   "value": round(float(np.mean(mean_gain)) / pooled_se, 2) if pooled_se else None,
                   "mean_gain": round(float(np.mean(mean_gain)), 4), "se": round(pooled_se, 4)})
    result.append({"condition": "per-seed gain (InstructBooth - DreamBooth) and its SE",
                   "gains": {str(s): [round(g, 4), round(se, 4)] for s, (g, se) in gains.items()}})
    return result


# --- output ---------------------------------------------------------------------------------------


def cell(entry: dict) -> str:
    return f"{entry['mean']:.3f} ± {entry['se']:.3f}"


def counts(done: dict, variant: str, name: str, split: str = "heldout") -> str:
    """"12 of 360 images": a 0/1 score summed over the seeds' images."""
    runs = done[variant].values()
    return f"{sum(r[split][name + '_count'] for r in runs)} of {sum(r[split]['images'] for r in runs)} images"


def markdown(table: dict, conditions: list[dict], meta: dict, done: dict) -> str:
    recipe = meta.get("recipe", "default")
    title = "# Quality on the embedded demo world" + ("" if recipe == "default" else f": the {recipe} recipe")
    out = [title, "",
           "InstructBooth's comparison on the demo world of `instructbooth demo`, made by `benchmarks/quality.py`. "
           "Held-out prompts use colour-shape pairs never seen in pretraining, personalization or RL. "
           "**Subject-conditional alignment** (the headline): per image, the share of the instruction's attributes "
           "(count, colour, shape, background) the exact checker reads back, counted only where the subject is there "
           "(fidelity >= 0.5), else 0. **Subject + every attribute**: share of images with the subject and all four "
           "attributes right. **Alignment**: the share of attributes with or without the subject. **Fidelity**: "
           "likeness of the striped diamond (0-1). **Subject shown**: share of images with the subject. "
           f"Mean of the per-seed means ± standard error over {len(meta['seeds'])} seeds "
           f"({', '.join(map(str, meta['seeds']))}); n: images behind each mean. The base model gets the "
           "instructions without the subject." + ("" if recipe == "default" else
           f" Every model runs with the `{recipe}` settings (instructbooth/demo/settings.py), not the demo's "
           "default; see the Setup section."), ""]
    for split, title in (("heldout", "Held-out prompts (36 scenes x 2 images per seed)"),
                         ("train", "Training prompts (72 scenes x 2 images per seed)")):
        out += [f"## {title}", "",
                "| Variant | What | Subject-cond. alignment | Subject + every attribute | Alignment | Fidelity | "
                "Subject shown | n |", "|---|---|---|---|---|---|---|---|"]
        for variant, (label, what) in VARIANTS.items():
            if variant in table:
                t = table[variant][split]
                cells = [cell(t[m]) if variant != "base" or m == "alignment" else "-" for m in METRICS]
                out.append(f"| {label} | {what} | " + " | ".join(cells) + f" | {t['alignment']['images']} |")
        out.append("")
    out += ["## Per seed (held-out)", "", "| Variant | " + " | ".join(f"seed {s}" for s in meta["seeds"]) + " |",
            "|---|" + "---|" * len(meta["seeds"])]
    for variant in VARIANTS:
        if variant in table:
            metric = "alignment" if variant == "base" else "subject_alignment"
            values = dict(zip(table[variant]["seeds"], table[variant]["heldout"][metric]["values"]))
            out.append(f"| {VARIANTS[variant][0]} ({metric.replace('_', ' ')}) | "
                       + " | ".join(f"{values[s]:.3f}" if s in values else "-" for s in meta["seeds"]) + " |")
    out += ["", "In images, held-out, all seeds: " + "; ".join(
        f"{VARIANTS[v][0]}: the subject in {counts(done, v, 'subject')}, the subject with every attribute right in "
        f"{counts(done, v, 'subject_exact')}" for v in VARIANTS if v in table and v != "base") + "."]
    alone = {v: table[v][ALONE] for v in VARIANTS if ALONE in table.get(v, {})}
    out += ["", "## The subject alone", "",
            "The subject prompt alone (\"on a <colour> background next to sks toy ...\", as the photos are captioned), "
            "8 images per background per seed: " + "; ".join(
                f"{VARIANTS[v][0]} {a['subject_count']} of {a['images']} images show the subject" for v, a in
                alone.items()) + ".", "", "## The bar (issue 20)", ""]
    for c in conditions:
        if "mean_gain" in c:
            out.append(f"- {c['condition']}: {c['mean_gain']:+.3f} ± {c['se']:.3f} ({c['value']} standard errors)")
        elif "holds" in c:
            out.append(f"- {c['condition']}: {'holds' if c['holds'] else 'does not hold'} "
                       f"({c['value']:.3f} against {c['target']:.3f})")
        else:
            out.append(f"- {c['condition']}: " + ", ".join(f"seed {s}: {g:+.3f} ± {se:.3f}" for s, (g, se) in
                                                            c["gains"].items()))
    out += ["", "## Setup", "", f"- {meta['settings']}",
            f"- Time: {meta['run_minutes']:.0f} min of runs, this call {meta['minutes']:.0f} min; {meta['machine']}", ""]
    return "\n".join(out)


def print_table(table: dict) -> None:
    print(f"\n{'variant':<20} {'held-out subj.-cond. alignment':>31} {'alignment':>16} {'fidelity':>16}")
    for variant in VARIANTS:
        if variant in table:
            h = table[variant]["heldout"]
            print(f"{variant:<20} {cell(h['subject_alignment']):>31} {cell(h['alignment']):>16} {cell(h['fidelity']):>16}")


def settings_line(config: DemoConfig) -> str:
    return (f"demo settings: DreamBooth {config.personalize.steps} steps (lr {config.personalize.learning_rate:g}, "
            f"rank {config.personalize.lora_rank}{prior_line(config.to_dict())}); RL {config.rl.method} {config.rl.epochs} epochs x "
            f"{config.rl.samples_per_epoch} samples (lr {config.rl.learning_rate:g}, {config.rl.train_timesteps} of "
            f"{config.rl.sample_steps} steps trained), identifier ratio "
            f"{config.rl.identifier_ratio:g}, the method's reward; evaluation {config.evaluation.per_prompt} images "
            f"per prompt, {config.evaluation.steps} sampler steps, guidance {config.evaluation.guidance:g}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = list(DEFAULT_VARIANTS) + list(args.variants)
    progress = args.work / "progress.json"
    done = {} if args.fresh or not progress.is_file() else json.loads(progress.read_text())
    started = time.perf_counter()
    components = load_model(args.weights)
    for seed in args.seeds:
        log(f"seed {seed}")
        config = recipe_config(args.recipe, seed, args.weights)
        run_seed(components, config, variants, args.work, done, lambda: write_json(progress, done))
    if args.no_write:
        return 0
    table = aggregate({v: done[v] for v in variants if v in done}, args.seeds)
    conditions = bar(table, done, args.seeds)
    machine = machine_record()
    meta = {"seeds": args.seeds, "recipe": args.recipe,
            "settings": settings_line(recipe_config(args.recipe, 0, args.weights)), "weights": args.weights or "shipped",
            "minutes": (time.perf_counter() - started) / 60,
            "run_minutes": sum(r["seconds"] for v in variants for r in done.get(v, {}).values()) / 60,
            "machine": f"{machine['cpus']} CPUs, {machine['torch_threads']} threads, load average {machine['load_average']}"}
    runs = {v: {s: {k: x for k, x in r.items() if k != "heldout_images"} for s, r in done[v].items()}
            for v in variants if v in done}
    write_json(args.json, {"meta": meta, "table": table, "bar": conditions, "runs": runs})
    write_text(args.markdown, markdown(table, conditions, meta, {v: done[v] for v in variants if v in done}))
    print_table(table)
    print("\n" + "\n".join(f"{c['condition']}: {c.get('holds', '')} {c.get('value', '')} / {c.get('target', '')}"
                           for c in conditions))
    print(f"\nwrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
