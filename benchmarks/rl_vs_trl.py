"""Benchmark: our DDPO trainer (`instructbooth.rl.train_rl`) against TRL's DDPOTrainer, head to head.

TRL removed DDPO after 0.19; it needs its own virtualenv (never the project's), e.g.

    python -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install torch==2.13.0            # the CPU build this project uses
    /tmp/trlvenv/bin/pip install trl==0.19.1 diffusers peft
    OMP_NUM_THREADS=1 python benchmarks/rl_vs_trl.py --trl-python /tmp/trlvenv/bin/python

(no torchvision is needed: TRL's DDPO path imports none; transformers only warns that its CLIP
image processor falls back to PIL). Versions used for the table below: see "TRL venv" there.

Both trainers train the same model with the same settings, on CPU, in fresh processes:
- the model: the random-init builders of benchmarks/rl.py ("tiny": `tiny_components(0)`;
  "small": `small_sd15_components(0)`, SD1.5-shaped with the full-size VAE), saved once as a
  local diffusers StableDiffusionPipeline folder (unet/, vae/, text_encoder/, scheduler/, and
  tokenizer/ with the CLIP tokenizer files shipped in instructbooth/configs/tokenizer). The UNet
  config's `sample_size` is set to resolution / VAE scale, because TRL's pipeline call takes the
  image size from it (ours takes height/width from RLConfig). TRL loads the folder with
  `DefaultDDPOStableDiffusionPipeline(folder, use_lora=True)` (diffusers `from_pretrained`), ours
  with `load_diffusers_folder`. Nothing touches the network (HF_HUB_OFFLINE=1).
- the settings (benchmarks/rl.py's): tiny 32 px, 2 sampling batches of 4, train batch 4;
  small 128 px, 1 sampling batch of 4, train batch 2; both 10 DDIM steps, eta 1, guidance 5
  (batched CFG at sampling and training), timestep fraction 1, one inner epoch, clip range
  1e-4, advantages clipped to +-5, AdamW lr 3e-4 / betas 0.9, 0.999 / eps 1e-8 / weight decay
  1e-4, grad-norm clip 1, fp32 (mixed_precision "no"), LoRA rank 4 alpha 4 on the UNet's
  to_q/to_k/to_v/to_out.0 (TRL's fixed targets), per-prompt stat tracking (buffer 16, min count
  2, both trainers), seed 0, one thread. The reward is the image brightness (mean pixel in
  [0, 1]), defined in the child. Prompts: ours draws from the InstructBooth prompt sets (half
  with the identifier "sks plushie"); TRL's `prompt_function` draws uniformly from the same
  templates in both forms. No checkpoints (TRL: save_freq past the last epoch; ours: no
  checkpoint_dir), no held-out evaluation, no image logging hook, no tracker.
- the trainable parameters are read off each run's optimizer (first optimizer step, global
  step hook); "LoRA params" must be equal on both sides, and optimizer steps per epoch too.

How time is measured, in the child process, without editing either trainer:
- TRL: the trainer instance's methods are wrapped with perf_counter timers: `step` (one
  epoch: "epoch s"), `_generate_samples` (prompt tokenising + text encoder, the pipeline call
  with its denoising loop and VAE decode, image post-processing: "sample s"), `compute_rewards`
  ("reward s"); "train s" is the rest of `step` (gathering, stat tracker, the per-inner-epoch
  shuffles and rebatching, and `_train_batched_samples`, reported alone as "update s").
- ours: `train_rl`'s own per-epoch timers (RLResult.metrics[i]["time"]): "sample" (denoising
  loop and VAE decode), "reward", "train" (advantages and every minibatch update), "total" (the
  whole epoch incl. its LoRA snapshot and metrics entry); "update s" is the train time too.
- each run does 1 warm-up epoch + --epochs measured ones; the figures are medians of the
  measured epochs pooled over the repeats; runs alternate (ours, TRL, ours, TRL, ...).
- a global optimizer step post-hook (`register_optimizer_step_post_hook`) counts the real
  optimizer steps (accelerate's wrapper steps the inner AdamW only when gradients sync).
Memory: "peak MB" is the child's peak resident set (`os.wait4` rusage; it equals the child's own
maxrss at the end of training, so it falls inside the RL loop, not at teardown). "load MB" is the
resident set at the first sampling call (model loaded, LoRA injected), "sampled MB" right after
that first sampling call, "added MB" = peak - sampled MB: what the epochs add once the weights
that sampling reads are resident on both sides. The two loaders differ, which is why "load MB"
is not comparable: diffusers/transformers `from_pretrained` keeps fp32 weights as views of the
memory-mapped safetensors, so they become resident only when first read (the VAE encoder and
most rows of CLIP's token table never are), while `load_diffusers_folder` copies every tensor
up front (small: ~445 MB more at load, ~280 MB of it weights RL never reads). Peak RSS still
favours ours.

    OMP_NUM_THREADS=1 python benchmarks/rl_vs_trl.py --trl-python /tmp/trlvenv/bin/python
    # defaults: --configs tiny,small --epochs tiny=3,small=1 --repeats 2 (~8 CPU-minutes)

Measured (shared 2-core machine, load average ~2.6 from other jobs, one thread per run, torch
2.13.0+cpu on both sides, our venv diffusers 0.42.1 / transformers 5.23.0; TRL venv: trl 0.19.1,
diffusers 0.42.1, transformers 5.23.0, peft 0.21.2, accelerate 1.15.0, datasets 5.2.0,
huggingface_hub 2.4.0; 2 rounds; medians of the measured epochs; x = TRL / ours):

    config variant epochs sample s     x train s     x epoch s     x peak MB     x sampled MB added MB     x
    tiny   ours         6    0.975 1.00x   2.560 1.00x   3.549 1.00x     512 1.00x        435       77 1.00x
    tiny   trl          6    1.009 1.04x   2.571 1.00x   3.604 1.02x     678 1.32x        532      147 1.90x
    small  ours         2   16.670 1.00x  21.409 1.00x  38.080 1.00x    1489 1.00x       1143      472 1.00x
    small  trl          2   16.552 0.99x  21.802 1.02x  38.354 1.01x    1861 1.25x        933      985 2.09x

    reward s: ~0.0002 on both sides (brightness). LoRA: 32 modules on both sides; trainable
    parameters 9984 (tiny) and 96256 (small), 64 tensors, on both sides; 2 optimizer steps per
    epoch on both. TRL hands AdamW the whole UNet (802948 / 25885700 parameters in 272 / 232
    tensors; the frozen ones never get a gradient, so AdamW skips them).

Speed is a tie within the noise of this machine (median epoch 1.02x tiny, 1.01x small):
the UNet work per sample is the same, and the overhead ours avoids (benchmarks/rl.py's "avoided"
column: re-encoding prompts, re-gathering trajectories, decoding prompt ids) is ~1% of an epoch
at these sizes. TRL's peak is 13-32% higher (the table takes the max over rounds; TRL's varied:
1680 and 1861 MB on small, ours 1489 both times) although ours holds ~280 MB more weights resident;
where TRL's extra memory during the epochs comes from was not traced here.

Writes benchmarks/results/rl_vs_trl.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rl_vs_trl.json"
VARIANTS = ("ours", "trl")

CONFIGS = {  # benchmarks/rl.py's SETTINGS for tiny and small
    "tiny": dict(resolution=32, sample_steps=10, guidance=5.0, sample_batch_size=4, sample_batches=2,
                 train_batch_size=4),
    "small": dict(resolution=128, sample_steps=10, guidance=5.0, sample_batch_size=4, sample_batches=1,
                  train_batch_size=2),
}
COMMON = dict(eta=1.0, timestep_fraction=1.0, inner_epochs=1, clip_range=1e-4, adv_clip=5.0, learning_rate=3e-4,
              weight_decay=1e-4, adam_betas=(0.9, 0.999), adam_eps=1e-8, max_grad_norm=1.0, lora_rank=4,
              lora_alpha=4.0, lora_targets=("to_q", "to_k", "to_v", "to_out.0"), tracker_buffer=16,
              tracker_min_count=2, seed=0)


# --- the model folder (our venv) -----------------------------------------------------------------


def write_model_folder(config: str, folder: Path) -> None:
    """benchmarks/rl.py's random-init model as a diffusers StableDiffusionPipeline folder."""
    from instructbooth.checkpoint import save_diffusers_folder
    from instructbooth.components import small_sd15_components, tiny_components

    parts = tiny_components(0) if config == "tiny" else small_sd15_components(0)
    scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    parts.unet.register_to_config(sample_size=CONFIGS[config]["resolution"] // scale)  # TRL's image size
    save_diffusers_folder(parts, folder)


def prompt_pool() -> list[str]:
    """Every training template of our default prompt sets, with and without the identifier."""
    from instructbooth.prompts import RLPrompts, Subject, with_identifier, without_identifier

    subject = Subject("sks", "plushie")
    prompts = RLPrompts.default(subject, heldout=None)
    return sorted({p for t in prompts.templates for p in (with_identifier(t, subject), without_identifier(t, subject))})


# --- the children --------------------------------------------------------------------------------


def brightness(images, prompts=None, metadata=None):
    """The reward: mean pixel of each image in [0, 1] -> [B]."""
    return images.float().mean(dim=(1, 2, 3))


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def install_step_counter(record: dict) -> None:
    """Counts real optimizer steps and notes, at the first one, the optimizer's parameters that
    require gradients (TRL gives AdamW all UNet parameters; the frozen ones never get a gradient)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer, args, kwargs) -> None:
        record["optimizer_steps"] += 1
        if record["trainable_parameters"] is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            trained = [p for p in params if p.requires_grad]
            record["trainable_parameters"] = sum(p.numel() for p in trained)
            record["trainable_tensors"] = len(trained)
            record["optimizer_parameters"] = sum(p.numel() for p in params)  # TRL hands AdamW the whole UNet
            record["optimizer_tensors"] = len(params)

    register_optimizer_step_post_hook(hook)


def run_ours(spec: dict, record: dict) -> None:
    import instructbooth.rl.trainer as trainer
    from instructbooth.checkpoint import load_diffusers_folder
    from instructbooth.lora import LoraLinear
    from instructbooth.prompts import RLPrompts, Subject
    from instructbooth.rl.config import RLConfig

    s = {**CONFIGS[spec["config"]], **COMMON}
    components = load_diffusers_folder(spec["model_dir"])
    config = RLConfig(
        height=s["resolution"], width=s["resolution"], sample_steps=s["sample_steps"], eta=s["eta"],
        guidance=s["guidance"], sample_batch_size=s["sample_batch_size"], sample_batches=s["sample_batches"],
        epochs=spec["epochs"], train_batch_size=s["train_batch_size"], inner_epochs=s["inner_epochs"],
        timestep_fraction=s["timestep_fraction"], clip_range=s["clip_range"], advantage="tracker",
        images_per_prompt=1, gradient_accumulation_steps=1, timestep_window=1.0,  # as TRL: every step, no groups
        tracker_buffer=s["tracker_buffer"], tracker_min_count=s["tracker_min_count"], adv_clip=s["adv_clip"],
        learning_rate=s["learning_rate"], weight_decay=s["weight_decay"], adam_betas=s["adam_betas"],
        adam_eps=s["adam_eps"], max_grad_norm=s["max_grad_norm"], lora_rank=s["lora_rank"],
        lora_alpha=s["lora_alpha"], unet_targets=s["lora_targets"], heldout_every=0, mixed_precision="no",
        seed=s["seed"],
    )
    collect = trainer.collect_samples

    def first_collect(ctx, epoch):  # resident set with the model loaded and the LoRA injected, and after sampling
        if record["load_rss_mb"] is not None:
            return collect(ctx, epoch)
        record["load_rss_mb"] = _rss_mb()
        record["lora_modules"] = sum(isinstance(m, LoraLinear) for m in components.unet.modules())
        samples = collect(ctx, epoch)
        record["sampled_rss_mb"] = _rss_mb()
        return samples

    trainer.collect_samples = first_collect
    result = trainer.train_rl(components, brightness, RLPrompts.default(Subject("sks", "plushie"), heldout=None), config)
    for entry in result.metrics:
        t = entry["time"]
        record["epochs"].append({"sample": t["sample"], "reward": t["reward"], "train": t["train"],
                                 "update": t["train"], "total": t["total"], "reward_mean": entry["reward"]["all"]["mean"]})


def run_trl(spec: dict, record: dict) -> None:
    import random
    import warnings

    import torch
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    s = {**CONFIGS[spec["config"]], **COMMON}
    if tuple(s["lora_targets"]) != ("to_q", "to_k", "to_v", "to_out.0") or s["lora_rank"] != 4 or s["lora_alpha"] != 4:
        raise ValueError("DefaultDDPOStableDiffusionPipeline's LoRA is fixed: rank 4, alpha 4, to_q/k/v/out.0")
    config = DDPOConfig(
        exp_name="rl_vs_trl", num_epochs=spec["epochs"], save_freq=spec["epochs"] + 1, mixed_precision="no",
        allow_tf32=False, seed=s["seed"], log_with=None, logdir=spec["output_dir"],
        project_kwargs={"project_dir": spec["output_dir"]},
        sample_num_steps=s["sample_steps"], sample_eta=s["eta"], sample_guidance_scale=s["guidance"],
        sample_batch_size=s["sample_batch_size"], sample_num_batches_per_epoch=s["sample_batches"],
        train_batch_size=s["train_batch_size"], train_learning_rate=s["learning_rate"],
        train_adam_beta1=s["adam_betas"][0], train_adam_beta2=s["adam_betas"][1],
        train_adam_weight_decay=s["weight_decay"], train_adam_epsilon=s["adam_eps"],
        train_max_grad_norm=s["max_grad_norm"], train_num_inner_epochs=s["inner_epochs"], train_cfg=True,
        train_adv_clip_max=s["adv_clip"], train_clip_range=s["clip_range"],
        train_timestep_fraction=s["timestep_fraction"], per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=s["tracker_buffer"],
        per_prompt_stat_tracking_min_count=s["tracker_min_count"],
    )
    pool, rng = spec["prompts"], random.Random(s["seed"])

    def prompt_fn():
        return rng.choice(pool), {}

    rewards: list[float] = []

    def reward_fn(images, prompts, metadata):
        values = brightness(images)
        rewards.extend(values.tolist())
        return values, {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no LoRA weights found" (a fresh LoRA is what we want), no image hook
        pipeline = DefaultDDPOStableDiffusionPipeline(spec["model_dir"], use_lora=True)
        trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    record["lora_modules"] = sum(1 for m in pipeline.unet.modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    current: dict = {}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                current[name] = current.get(name, 0.0) + time.perf_counter() - began
        return wrapper

    generate = trainer._generate_samples

    def first_generate(*args, **kwargs):
        if record["load_rss_mb"] is not None:
            return generate(*args, **kwargs)
        record["load_rss_mb"] = _rss_mb()
        samples = generate(*args, **kwargs)
        record["sampled_rss_mb"] = _rss_mb()
        return samples

    trainer._generate_samples = timed("sample", first_generate)
    trainer.compute_rewards = timed("reward", trainer.compute_rewards)
    trainer._train_batched_samples = timed("update", trainer._train_batched_samples)
    step = trainer.step

    def timed_step(epoch, global_step):
        current.clear()
        rewards.clear()
        began = time.perf_counter()
        out = step(epoch, global_step)
        total = time.perf_counter() - began
        record["epochs"].append({"sample": current["sample"], "reward": current["reward"],
                                 "train": total - current["sample"] - current["reward"], "update": current["update"],
                                 "total": total, "reward_mean": sum(rewards) / len(rewards)})
        return out

    trainer.step = timed_step
    with torch.inference_mode(False):
        trainer.train()


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record = {"optimizer_steps": 0, "trainable_parameters": None, "trainable_tensors": None, "load_rss_mb": None,
              "sampled_rss_mb": None,
              "epochs": [], "python": sys.executable}
    install_step_counter(record)
    (run_ours if spec["variant"] == "ours" else run_trl)(spec, record)
    record["end_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["versions"] = _versions()
    Path(spec["record"]).write_text(json.dumps(record))
    return 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "trl", "diffusers", "transformers", "peft", "accelerate", "datasets", "huggingface_hub",
                 "safetensors", "tokenizers", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# --- the parent ----------------------------------------------------------------------------------


def run_child(spec: dict, python: str, workdir: Path, env: dict) -> dict:
    """One run in a fresh process: its record plus peak RSS (wait4) and wall clock."""
    tag = f"{spec['config']}-{spec['variant']}-{spec['repeat']}"
    spec = {**spec, "output_dir": str(workdir / "out" / tag), "record": str(workdir / f"{tag}.record.json")}
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{tag}.log"
    with open(log_path, "w") as log:
        launched = time.time()
        process = subprocess.Popen([python, str(Path(__file__).resolve()), "--child", str(spec_path)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=workdir)
        _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        ended = time.time()
    row = {"config": spec["config"], "variant": spec["variant"], "repeat": spec["repeat"]}
    if code != 0 or not Path(spec["record"]).is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {**row, "error": f"exit {code}: " + " | ".join(tail)}
    record = json.loads(Path(spec["record"]).read_text())
    steps_expected = spec["epochs"] * CONFIGS[spec["config"]]["sample_batches"] * \
        CONFIGS[spec["config"]]["sample_batch_size"] // CONFIGS[spec["config"]]["train_batch_size"]
    if record["optimizer_steps"] != steps_expected or len(record["epochs"]) != spec["epochs"]:
        return {**row, "error": f"{record['optimizer_steps']} optimizer steps / {len(record['epochs'])} epochs, "
                                f"expected {steps_expected} / {spec['epochs']}"}
    return {**row, **record, "process_s": round(ended - launched, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "optimizer_steps_per_epoch": record["optimizer_steps"] // spec["epochs"]}


def summarize(rows: list[dict], warmup: int) -> list[dict]:
    summary = []
    for config in dict.fromkeys(r["config"] for r in rows):
        ours = None
        for variant in VARIANTS:
            runs = [r for r in rows if r["config"] == config and r["variant"] == variant and "error" not in r]
            if not runs:
                continue
            epochs = [e for r in runs for e in r["epochs"][warmup:]]
            item = {"config": config, "variant": variant, "runs": len(runs), "measured_epochs": len(epochs),
                    **{f"{k}_s": round(statistics.median(e[k] for e in epochs), 4)
                       for k in ("sample", "reward", "train", "update", "total")},
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                    "load_rss_mb": max(r["load_rss_mb"] for r in runs),
                    "sampled_rss_mb": max(r["sampled_rss_mb"] for r in runs),
                    "added_rss_mb": max(r["peak_rss_mb"] - r["sampled_rss_mb"] for r in runs),
                    "trainable_parameters": sorted({r["trainable_parameters"] for r in runs}),
                    "trainable_tensors": sorted({r["trainable_tensors"] for r in runs}),
                    "optimizer_parameters": sorted({r["optimizer_parameters"] for r in runs}),
                    "lora_modules": sorted({r["lora_modules"] for r in runs}, key=str),
                    "optimizer_steps_per_epoch": sorted({r["optimizer_steps_per_epoch"] for r in runs})}
            ours = item if variant == "ours" else ours
            if ours is not None:
                for key in ("sample_s", "train_s", "total_s", "peak_rss_mb", "added_rss_mb"):
                    item[f"{key}_vs_ours"] = round(item[key] / max(ours[key], 1e-9), 2)
            summary.append(item)
    return summary


def table(summary: list[dict]) -> str:
    header = (f"{'config':<7}{'variant':<8}{'epochs':>7}{'sample s':>10}{'x':>7}{'reward s':>10}{'train s':>9}"
              f"{'x':>7}{'update s':>10}{'epoch s':>9}{'x':>7}{'peak MB':>9}{'x':>7}{'load MB':>9}{'sampled MB':>12}"
              f"{'added MB':>10}{'x':>7}"
              f"{'LoRA params':>13}{'steps/ep':>10}")
    lines = [header, "-" * len(header)]
    for s in summary:
        params = ",".join(str(p) for p in s["trainable_parameters"])
        steps = ",".join(str(p) for p in s["optimizer_steps_per_epoch"])
        lines.append(
            f"{s['config']:<7}{s['variant']:<8}{s['measured_epochs']:>7}{s['sample_s']:>10.3f}"
            f"{s.get('sample_s_vs_ours', 1):>6.2f}x{s['reward_s']:>10.4f}{s['train_s']:>9.3f}"
            f"{s.get('train_s_vs_ours', 1):>6.2f}x{s['update_s']:>10.3f}{s['total_s']:>9.3f}"
            f"{s.get('total_s_vs_ours', 1):>6.2f}x{s['peak_rss_mb']:>9.0f}{s.get('peak_rss_mb_vs_ours', 1):>6.2f}x"
            f"{s['load_rss_mb']:>9.0f}{s['sampled_rss_mb']:>12.0f}{s['added_rss_mb']:>10.0f}{s.get('added_rss_mb_vs_ours', 1):>6.2f}x{params:>13}{steps:>10}")
    return "\n".join(lines)


def parse_epochs(text: str, configs: list[str]) -> dict[str, int]:
    """"3" -> 3 for every config; "tiny=3,small=1" -> per config (each config named)."""
    if "=" not in text:
        return {name: int(text) for name in configs}
    given = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    missing = [name for name in configs if name not in given]
    if missing:
        raise ValueError(f"--epochs names no count for {', '.join(missing)}")
    return {name: given[name] for name in configs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", help="python of a venv with trl==0.19.1 (see the docstring)")
    parser.add_argument("--configs", default="tiny,small", help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--epochs", default="tiny=3,small=1",
                        help="measured epochs per run, after 1 warm-up epoch: N, or per config (tiny=3,small=1)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (ours, TRL) runs per config")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--workdir", default=None, help="model folders and logs (default: a temporary folder)")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if not args.trl_python:
        parser.error("--trl-python is required (the python of a venv with trl==0.19.1; see the docstring)")
    configs = args.configs.split(",")
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    try:
        epochs = parse_epochs(args.epochs, configs)
    except ValueError as error:
        parser.error(str(error))
    pythons = {"ours": sys.executable, "trl": args.trl_python}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ib-vs-trl-"))
    workdir.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_DISABLED": "true", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    pool = prompt_pool()
    rows = []
    try:
        for name in configs:
            model_dir = workdir / name / "model"
            if not (model_dir / "model_index.json").is_file():
                shutil.rmtree(model_dir, ignore_errors=True)
                write_model_folder(name, model_dir)
            for repeat in range(args.repeats):
                for variant in VARIANTS:
                    spec = {"config": name, "variant": variant, "repeat": repeat, "model_dir": str(model_dir),
                            "epochs": epochs[name] + 1, "prompts": pool}
                    row = run_child(spec, pythons[variant], workdir, env)
                    rows.append(row)
                    shown = row.get("error") or ("epochs s " + ", ".join(f"{e['total']:.2f}" for e in row["epochs"]) +
                                                 f"; peak {row['peak_rss_mb']:.0f} MB; LoRA params "
                                                 f"{row['trainable_parameters']}")
                    print(f"{name:<7}{variant:<6}#{repeat}  {shown}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(rows, warmup=1)
    print("\n" + table(summary))

    import torch

    from instructbooth.files import write_json

    write_json(args.json, {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "threads": args.threads, "load_average": os.getloadavg()},
        "ours_versions": {**_versions(), "torch": torch.__version__},
        "trl_versions": next((r["versions"] for r in rows if r["variant"] == "trl" and "error" not in r), None),
        "settings": {"configs": {n: CONFIGS[n] for n in configs}, "common": COMMON, "mixed_precision": "no",
                     "warmup_epochs": 1, "measured_epochs": epochs, "prompt_pool": len(pool)},
        "summary": summary, "runs": rows,
    })
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
