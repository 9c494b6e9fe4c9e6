"""Benchmark: our DreamBooth LoRA trainer against diffusers' train_dreambooth_lora.py, head to head.

    # the reference script is not part of this repository; take it from a diffusers checkout
    # (the version used for benchmarks/results/personalize_vs_diffusers.json is named there):
    git clone https://github.com/huggingface/diffusers && cp diffusers/examples/dreambooth/train_dreambooth_lora.py /tmp/
    # it imports torchvision (transforms only). Any torchvision built for the installed torch
    # works; a CUDA build on a CPU-only torch also works here (see "torchvision" below), e.g.
    pip install --no-deps --target /tmp/refdeps "torchvision==0.28.*"   # the one for torch 2.13
    OMP_NUM_THREADS=1 python benchmarks/personalize_vs_diffusers.py \\
        --reference-script /tmp/train_dreambooth_lora.py --reference-pythonpath /tmp/refdeps

Both trainers train the same model with the same settings, on CPU, in fresh processes:
- the model: random-init weights (speed and memory do not depend on the values) from the
  builders of benchmarks/personalize.py ("tiny": the test model at 32 px; "small-sd15": the
  SD1.5-shaped small model with the full-size VAE at 256 px), saved once as a local diffusers
  pipeline folder (unet/, vae/, text_encoder/, scheduler/, model_index.json, and tokenizer/
  holding the CLIP tokenizer files shipped in instructbooth/configs/tokenizer). The script gets
  it as --pretrained_model_name_or_path; ours loads it with `load_diffusers_folder`. Nothing
  touches the network (HF_HUB_OFFLINE=1).
- the data: 4 instance photos (PNG, square, twice the training resolution), one prompt
  "a photo of sks plushie", centre crop, no flips (the script has none), no prior preservation.
- the training: fp32, batch 1, UNet-only LoRA of rank 8 and alpha 8 on to_q/to_k/to_v/to_out.0
  (the script's targets; its add_k_proj/add_v_proj do not exist in SD1.5), the same AdamW
  (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 1e-2), constant learning rate without warm-up, gradient clipping at 1.0, seed 0, text encoder frozen, one
  thread (OMP_NUM_THREADS, --threads). The trainable parameter count of each run is read off
  its optimizer ("LoRA params") and off the LoRA file it wrote ("in file"): equal counts mean
  the two LoRAs are the same size.

Variants, run in turn (ours, diffusers, diffusers-precompute, ours, ...) so that load from other
processes on the machine falls on all of them alike:
- "ours": `instructbooth.personalize` as shipped (photos squared once, VAE posteriors and prompt
  embeddings cached before step 1).
- "diffusers": the script as documented (VAE and text encoder run on every batch; photos
  decoded and transformed by its DataLoader every step; accelerate's wrappers).
- "diffusers-precompute": the script with --pre_compute_text_embeddings, its fastest mode
  (prompt embeddings computed once and the text encoder freed; the VAE still runs every step).

How the time per step is measured, the same way in every process: a global optimizer step
hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) notes the wall clock after
every optimizer step. Ours is run by this file, the script by a small wrapper in this file
(`runpy` with its own argv after installing the hook), so neither trainer is edited. The
interval between two consecutive steps holds everything a step costs (data loading, encoders,
forward, backward, clipping, the update, logging). "step s" is the median interval from the
2nd to the 3rd step onwards (the first two steps are warm-up, as in benchmarks/personalize.py),
pooled over the repeats. "to last s" is from the launch of the process to its last optimizer
step: imports, model loading, our one-off caching and every step; it shows what the per-step
speed buys in a run of this length.

Memory: "peak MB" is the process's peak resident set (`os.wait4` rusage of the child, max over
repeats). The script ends by loading the whole pipeline a second time for its final inference
(even without a validation prompt), so its process peak includes that; "train MB" is the peak
resident set up to the last optimizer step (`getrusage` in the step hook), the fair figure
for training. Both include loading the model, and the two load differently:
diffusers/transformers `from_pretrained` keeps fp32 weights as views of the memory-mapped
safetensors files, so weights that training never reads (the VAE decoder, nearly all rows of
CLIP's token-embedding table) never become resident, while our `load_diffusers_folder` copies
every tensor into process memory (and briefly holds a part's file views beside its copies).
For the small SD1.5-shaped model that is about 330 MB (decoder 189 MB, token table 145 MB)
that count against ours and not against the script; it is a property of the loader, not of
the training loop (on a GPU, where the weights are moved to the device, it does not arise).

torchvision: PyPI's Linux wheels are CUDA builds; on a CPU-only torch their compiled ops fail
to load and `import torchvision` then fails while registering fake kernels for those ops
(`torchvision::nms does not exist`). The wrapper then stubs `torchvision._meta_registrations`
(the script uses no torchvision op, only the PIL transforms, which are pure Python) and says
so in the results ("torchvision_ops_stubbed").

Measured (2 shared CPU cores, one thread per run, torch 2.13.0+cpu, diffusers 0.42.1; the
script from diffusers main at 58eb52c0, git blob e67e64af; 2 rounds; MB = peak resident set):

    config      variant               steps  step s  x ours  to last s  train MB  LoRA params
    tiny        ours                     40  0.0300   1.00x        5.1       434        19968
    tiny        diffusers                40  0.0380   1.27x        5.6       449        19968
    tiny        diffusers-precompute     40  0.0369   1.23x        6.0       437        19968
    small-sd15  ours                      8  1.2907   1.00x       28.0      1401       192512
    small-sd15  diffusers                 8  4.1932   3.25x       38.5      1282       192512
    small-sd15  diffusers-precompute      8  4.2159   3.27x       39.0      1204       192512

Ours reaches step 1 later (small-sd15: 19 s against 9 s: the one-off VAE cache) and is ahead
from about the 5th step on. The small model's UNet is one level, so the VAE encoder that the
script runs every step is most of its step; on full SD1.5 the UNet weighs more and the ratio
will be smaller. Its text encoder has one layer, which is why --pre_compute_text_embeddings
changes little here. Ours has the higher peak on small-sd15 because of how the model is
loaded (above): a 3-step run of ours on the same model peaked at 1378 MB as shipped and at
1049 MB with `load_diffusers_folder` keeping the file views (its `_assign` with copy=False).

Writes benchmarks/results/personalize_vs_diffusers.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "personalize_vs_diffusers.json"
WARMUP = 2
PHOTOS = 4

CONFIGS = {
    "tiny": {"model": "tiny", "resolution": 32, "steps": 40},
    "small-sd15": {"model": "small_sd15", "resolution": 256, "steps": 8},
}
VARIANTS = ("ours", "diffusers", "diffusers-precompute")
SETTINGS = {"batch_size": 1, "rank": 8, "learning_rate": 1e-4, "seed": 0, "identifier": "sks", "class_noun": "plushie"}
PROMPT = "a photo of {identifier} {class_noun}"


# --- the model folder and photos ---------------------------------------------------------------


def write_model_folder(model: str, folder: Path) -> None:
    """The benchmark's random-init model as a diffusers StableDiffusionPipeline folder."""
    from benchmarks.personalize import build_model
    from instructbooth.checkpoint import save_diffusers_folder

    save_diffusers_folder(build_model(model, "cpu", "no"), folder)


def write_photos(folder: Path, resolution: int, count: int = PHOTOS) -> None:
    """`count` square RGB PNGs of twice the training resolution: smooth colour fields plus noise."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    side = 2 * resolution
    for i in range(count):
        coarse = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(side, side), mode="bicubic")
        image = (coarse[0] + 0.1 * torch.randn(3, side, side, generator=generator)).clamp(0, 1)
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"photo_{i}.png")


# --- the children ------------------------------------------------------------------------------


def install_step_clock(record: dict) -> None:
    """Notes the wall clock and the peak RSS after every optimizer step of any torch optimizer,
    and the optimizer's trainable parameters the first time."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer, args, kwargs) -> None:
        record["stamps"].append(time.time())
        record["train_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if record["trainable_parameters"] is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            record["trainable_parameters"] = sum(p.numel() for p in params)
            record["trainable_tensors"] = len(params)

    register_optimizer_step_post_hook(hook)


def train_ours(spec: dict) -> None:
    from instructbooth.checkpoint import load_diffusers_folder
    from instructbooth.personalize import PersonalizeConfig, personalize, save_result

    components = load_diffusers_folder(spec["model_dir"])
    config = PersonalizeConfig(
        identifier=SETTINGS["identifier"], class_noun=SETTINGS["class_noun"],
        instance_template="a photo of {id} {cls}", use_captions=False,
        lora_rank=SETTINGS["rank"], lora_alpha=float(SETTINGS["rank"]), steps=spec["steps"], batch_size=SETTINGS["batch_size"],
        learning_rate=SETTINGS["learning_rate"], warmup_steps=0, resolution=spec["resolution"], flip=False,
        seed=SETTINGS["seed"], checkpoint_every=0,
    )
    result = personalize(components, spec["photos_dir"], config)
    save_result(result, Path(spec["output_dir"]) / "lora.safetensors")


def reference_argv(spec: dict, precompute: bool) -> list[str]:
    argv = [
        spec["script"],
        "--pretrained_model_name_or_path", spec["model_dir"],
        "--instance_data_dir", spec["photos_dir"],
        "--instance_prompt", PROMPT.format(**SETTINGS),
        "--output_dir", spec["output_dir"],
        "--resolution", str(spec["resolution"]), "--center_crop",
        "--train_batch_size", str(SETTINGS["batch_size"]),
        "--max_train_steps", str(spec["steps"]), "--checkpointing_steps", str(spec["steps"] + 1),
        "--learning_rate", str(SETTINGS["learning_rate"]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--lora-rank", str(SETTINGS["rank"]), "--seed", str(SETTINGS["seed"]),
        "--mixed_precision", "no", "--dataloader_num_workers", "0",
    ]
    return argv + (["--pre_compute_text_embeddings"] if precompute else [])


def run_reference(spec: dict, record: dict) -> None:
    import runpy

    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:  # a CUDA torchvision on a CPU torch: its ops are missing (see the docstring)
        if "torchvision::" not in str(error):
            raise
        import types

        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401,F811

        record["torchvision_ops_stubbed"] = True
    sys.argv = reference_argv(spec, spec["variant"] == "diffusers-precompute")
    runpy.run_path(spec["script"], run_name="__main__")


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record = {"stamps": [], "train_rss_kb": None, "trainable_parameters": None, "trainable_tensors": None}
    install_step_clock(record)
    if spec["variant"] == "ours":
        train_ours(spec)
    else:
        run_reference(spec, record)
    Path(spec["record"]).write_text(json.dumps(record))
    return 0


# --- the parent --------------------------------------------------------------------------------


def run_child(spec: dict, workdir: Path, env: dict) -> dict:
    """Runs one variant in a fresh process; its record plus wall clock and peak RSS (wait4)."""
    tag = f"{spec['config']}-{spec['variant']}-{spec['repeat']}"
    spec = {**spec, "output_dir": str(workdir / "out" / tag), "record": str(workdir / f"{tag}.record.json")}
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{tag}.log"
    with open(log_path, "w") as log:
        launched = time.time()
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=workdir)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        ended = time.time()
    row = {"config": spec["config"], "variant": spec["variant"], "repeat": spec["repeat"]}
    if process.returncode != 0 or not Path(spec["record"]).is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {**row, "error": f"exit {process.returncode}: " + " | ".join(tail)}
    record = json.loads(Path(spec["record"]).read_text())
    record["lora_file_parameters"] = lora_file_parameters(Path(spec["output_dir"]))
    stamps = record.pop("stamps")
    if len(stamps) != spec["steps"]:
        return {**row, "error": f"{len(stamps)} optimizer steps noted, expected {spec['steps']}"}
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP - 1:]
    return {
        **row, "steps": spec["steps"], "step_intervals_s": [round(x, 5) for x in intervals],
        "median_step_s": round(statistics.median(intervals), 5),
        "to_first_step_s": round(stamps[0] - launched, 3), "to_last_step_s": round(stamps[-1] - launched, 3),
        "process_s": round(ended - launched, 3),
        "train_peak_rss_mb": round(record.pop("train_rss_kb") / 1024, 1),
        "process_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        **record,
    }


def lora_file_parameters(folder: Path) -> int | None:
    """Parameters in the LoRA file a run wrote (its alpha scalars left out), None if it wrote none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        return None
    with safe_open(str(files[0]), "pt") as handle:
        return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys() if not k.endswith(".alpha"))


def summarize(rows: list[dict]) -> list[dict]:
    """Per config and variant: median of the pooled step intervals, max peaks, ratios to ours."""
    summary = []
    for config in dict.fromkeys(r["config"] for r in rows):
        ours = None
        for variant in VARIANTS:
            runs = [r for r in rows if r["config"] == config and r["variant"] == variant and "error" not in r]
            if not runs:
                continue
            item = {
                "config": config, "variant": variant, "runs": len(runs), "steps": runs[0]["steps"],
                "median_step_s": round(statistics.median(x for r in runs for x in r["step_intervals_s"]), 5),
                "to_last_step_s": round(statistics.median(r["to_last_step_s"] for r in runs), 2),
                "train_peak_rss_mb": max(r["train_peak_rss_mb"] for r in runs),
                "process_peak_rss_mb": max(r["process_peak_rss_mb"] for r in runs),
                "trainable_parameters": sorted({r["trainable_parameters"] for r in runs}),
                "trainable_tensors": sorted({r["trainable_tensors"] for r in runs}),
                "lora_file_parameters": sorted({r["lora_file_parameters"] for r in runs}, key=str),
            }
            ours = item if variant == "ours" else ours
            if ours is not None:
                item["step_time_vs_ours"] = round(item["median_step_s"] / ours["median_step_s"], 2)
                item["train_rss_vs_ours"] = round(item["train_peak_rss_mb"] / ours["train_peak_rss_mb"], 2)
            summary.append(item)
    return summary


def table(summary: list[dict]) -> str:
    header = (f"{'config':<12}{'variant':<22}{'steps':>6}{'step s':>10}{'x ours':>8}{'to last s':>11}"
              f"{'train MB':>10}{'x ours':>8}{'peak MB':>9}{'LoRA params':>13}{'in file':>9}")
    lines = [header, "-" * len(header)]
    for s in summary:
        params = ",".join(str(p) for p in s["trainable_parameters"])
        in_file = ",".join(str(p) for p in s["lora_file_parameters"])
        lines.append(f"{s['config']:<12}{s['variant']:<22}{s['steps']:>6}{s['median_step_s']:>10.4f}"
                     f"{s.get('step_time_vs_ours', 1):>7.2f}x{s['to_last_step_s']:>11.1f}{s['train_peak_rss_mb']:>10.0f}"
                     f"{s.get('train_rss_vs_ours', 1):>7.2f}x{s['process_peak_rss_mb']:>9.0f}{params:>13}{in_file:>9}")
    return "\n".join(lines)


def script_identity(path: Path) -> dict:
    """The script's git blob id (find its commits with `git log --find-object=<id>`) and its
    minimum diffusers version."""
    data = path.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    needs = re.search(rb'check_min_version\("([^"]+)"\)', data)
    return {"name": path.name, "git_blob": blob, "check_min_version": needs.group(1).decode() if needs else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-script", required=False, help="path to diffusers' train_dreambooth_lora.py")
    parser.add_argument("--reference-version", default="",
                        help="where the script came from, recorded in the results (e.g. diffusers@<commit>)")
    parser.add_argument("--reference-pythonpath", default="",
                        help="extra sys.path for the script's process only (e.g. a --target folder with torchvision)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: per config)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of runs per config")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--workdir", default=None, help="model folders, photos, logs (default: a temporary folder)")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if not args.reference_script:
        parser.error("--reference-script is required (see the docstring: how to get it)")
    script = Path(args.reference_script).resolve()
    if not script.is_file():
        parser.error(f"no reference script at {script}")
    variants = args.variants.split(",")
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for name in variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ib-vs-diffusers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    base_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "TOKENIZERS_PARALLELISM": "false"}
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    envs = {"ours": {**base_env, "PYTHONPATH": os.pathsep.join(path)}}
    reference_path = ([args.reference_pythonpath] if args.reference_pythonpath else []) + path
    envs["diffusers"] = envs["diffusers-precompute"] = {**base_env, "PYTHONPATH": os.pathsep.join(reference_path)}
    rows = []
    try:
        for name in args.configs.split(","):
            config = CONFIGS[name]
            model_dir, photos_dir = workdir / name / "model", workdir / name / "photos"
            if not (model_dir / "model_index.json").is_file():
                shutil.rmtree(model_dir, ignore_errors=True)
                shutil.rmtree(photos_dir, ignore_errors=True)
                write_model_folder(config["model"], model_dir)
                write_photos(photos_dir, config["resolution"])
            for repeat in range(args.repeats):
                for variant in variants:
                    spec = {"config": name, "variant": variant, "repeat": repeat, "script": str(script),
                            "model_dir": str(model_dir), "photos_dir": str(photos_dir),
                            "resolution": config["resolution"], "steps": args.steps or config["steps"]}
                    row = run_child(spec, workdir, envs[variant])
                    rows.append(row)
                    shown = row.get("error") or (f"{row['median_step_s']:.4f} s/step, train {row['train_peak_rss_mb']:.0f}"
                                                 f" MB, peak {row['process_peak_rss_mb']:.0f} MB")
                    print(f"{name:<12}{variant:<22}#{repeat}  {shown}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(rows)
    print("\n" + table(summary))

    import diffusers
    import torch

    from instructbooth.files import write_json

    write_json(args.json, {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "diffusers": diffusers.__version__, "threads": args.threads, "cpus": os.cpu_count()},
        "reference_script": {**script_identity(script), "version": args.reference_version},
        "settings": {**SETTINGS, "prompt": PROMPT.format(**SETTINGS), "photos": PHOTOS, "photo_side": "2x resolution",
                     "flip": False, "center_crop": True, "mixed_precision": "no", "prior_preservation": False,
                     "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"], "alpha": SETTINGS["rank"]},
        "configs": {n: CONFIGS[n] for n in args.configs.split(",")},
        "warmup_steps": WARMUP, "summary": summary, "runs": rows,
    })
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
