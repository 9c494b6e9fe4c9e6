"""Benchmark: time per training step and peak memory of `instructbooth.personalize`.

    OMP_NUM_THREADS=2 python benchmarks/personalize.py            # every case this machine can run
    python benchmarks/personalize.py --cases tiny-cpu --steps 30  # one case

Cases (random-init weights: speed and memory do not depend on the values):
- tiny-cpu:       tiny SD-family model, 32 px, CPU
- small-sd15-cpu: SD1.5-shaped small model (320 channels, one level, full-size VAE), 256 px, CPU
- sd15-gpu:       the full SD1.5 architecture, 512 px, fp16 frozen weights + fp32 LoRA, CUDA
- sd15-gpu-gc:    the same with gradient checkpointing (the 8 GB configuration)

Each case runs twice, each time in a fresh process (so peak memory is its own):
- "cached": our trainer as shipped. Photos are squared once; their VAE posteriors (both
  flips) and the frozen text encoder's prompt embeddings are computed once before step 1.
- "uncached" (`cache=False`): the same loop re-encoding every batch with the VAE and
  the text encoder: what caching buys, inside our own trainer.

The comparison with diffusers' examples/dreambooth/train_dreambooth_lora.py itself is
benchmarks/personalize_vs_diffusers.py: it saves these same models as local diffusers folders
and runs the real script on them (--pretrained_model_name_or_path takes a folder; nothing is
fetched), against ours with the same settings. Per step, that script
  - runs the VAE encoder on every batch (we: never, after the cache is filled),
  - runs the text encoder on every batch unless --pre_compute_text_embeddings (we: cached),
  - decodes, resizes and crops the PIL photos again in a DataLoader (we: once), and
  - goes through accelerate's wrappers and hooks (we: plain modules; `accelerate launch`
    remains possible from outside).

Reported per case and variant: median seconds per optimizer step (after 2 warm-up steps),
the seconds until step 1 is done (image loading, the one-off caching, one step), and peak memory: the process's peak
resident set on CPU, `torch.cuda.max_memory_allocated` on a GPU (the goal: under 8 GB).
Writes benchmarks/results/personalize.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "personalize.json"
WARMUP = 2

CASES = {
    "tiny-cpu": {"model": "tiny", "device": "cpu", "resolution": 32, "steps": 30},
    "small-sd15-cpu": {"model": "small_sd15", "device": "cpu", "resolution": 256, "steps": 8},
    "sd15-gpu": {"model": "sd15", "device": "cuda", "resolution": 512, "steps": 25, "mixed_precision": "fp16"},
    "sd15-gpu-gc": {"model": "sd15", "device": "cuda", "resolution": 512, "steps": 25, "mixed_precision": "fp16",
                    "gradient_checkpointing": True},
}
VARIANTS = {"cached": True, "uncached": False}


def build_model(name: str, device: str, mixed_precision: str):
    """Random-init components on `device`, already in 16 bits for mixed precision (as the CLI
    loads them), so the fp32 copy never reaches the GPU."""
    import torch

    from instructbooth.components import build_components, sd15_configs, small_sd15_components, tiny_components

    builders = {"tiny": tiny_components, "small_sd15": small_sd15_components,
                "sd15": lambda: build_components(*sd15_configs(), seed=0)}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return builders[name]().to(device, dtype)


def run_case(name: str, variant: str, steps: int | None) -> dict:
    """Trains one case in this process and measures it."""
    import torch

    from instructbooth.personalize import PersonalizeConfig, personalize

    case = dict(CASES[name])
    steps = steps or case.pop("steps")
    case.pop("steps", None)
    model, device, resolution = case.pop("model"), case.pop("device"), case.pop("resolution")
    torch.manual_seed(0)
    components = build_model(model, device, case.get("mixed_precision", "no"))
    photos = torch.rand(4, resolution, resolution, 3)  # four "photos", ComfyUI layout
    config = PersonalizeConfig(resolution=resolution, steps=steps, cache=VARIANTS[variant], checkpoint_every=0, **case)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps = []

    def clock(report) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    result = personalize(components, photos, config, callback=clock)
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP - 1 :]
    median = statistics.median(step_times)
    return {
        "case": name, "variant": variant, "model": model, "device": device, "resolution": resolution,
        "mixed_precision": config.mixed_precision, "gradient_checkpointing": config.gradient_checkpointing,
        "batch_size": config.batch_size, "lora_rank": config.lora_rank, "steps": steps,
        "median_step_s": round(median, 5),
        "first_step_s": round(stamps[0] - started, 3),  # image loading, caching and the first step
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "final_loss": round(result.loss_history[-1], 5),
    }


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB (macOS: bytes)
    return kilobytes / (2**20 if sys.platform == "darwin" else 2**10)


def available(name: str) -> str | None:
    """None when the case can run here, else why not."""
    if CASES[name]["device"] != "cuda":
        return None
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def run_in_child(name: str, variant: str, steps: int | None) -> dict:
    command = [sys.executable, __file__, "--child", name, variant] + (["--steps", str(steps)] if steps else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        return {"case": name, "variant": variant, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    header = f"{'case':<16}{'variant':<10}{'device':<7}{'px':>5}{'step s':>10}{'1st s':>9}{'peak MB':>10}{'speedup':>9}"
    lines = [header, "-" * len(header)]
    by_case = {(r["case"], r["variant"]): r for r in rows if "median_step_s" in r}
    for row in rows:
        if "skipped" in row or "error" in row:
            lines.append(f"{row['case']:<16}{row.get('variant', ''):<10}{row.get('skipped') or row.get('error')}")
            continue
        base = by_case.get((row["case"], "uncached"))
        speedup = f"{base['median_step_s'] / row['median_step_s']:.2f}x" if base else ""
        lines.append(f"{row['case']:<16}{row['variant']:<10}{row['device']:<7}{row['resolution']:>5}"
                     f"{row['median_step_s']:>10.4f}{row['first_step_s']:>9.2f}{row['peak_memory_mb']:>10.0f}{speedup:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per case)")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the results")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(*args.child, args.steps)))
        return 0
    rows = []
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        reason = available(name)
        for variant in VARIANTS:
            rows.append({"case": name, "variant": variant, "skipped": reason} if reason else
                        run_in_child(name, variant, args.steps))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(rows))
    from instructbooth.files import write_json

    import torch

    write_json(args.json, {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "warmup_steps": WARMUP, "results": rows,
    })
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
