"""RL fine-tuning speed and memory: seconds per epoch split into sampling / reward /
training, peak memory, and achieved FLOP/s (utilisation where the peak is known).

Configurations (random weights; speed does not depend on the values):
- tiny:   tiny_components, 32 px, 10 DDIM steps, CFG 5, 2 x 4 samples, brightness reward (CPU);
- small:  small_sd15_components (SD1.5-shaped, full VAE), 128 px, 10 steps, CFG 5, 4 samples,
          brightness reward (CPU);
- small-b4, small-accum4: small with one update on all 4 samples, as one batch of 4 or as 4
          micro-batches of 1 (gradient accumulation: the memory of training should follow the
          micro-batch);
- sd15:   the full SD1.5 architecture at 512 px, 50 steps, CFG 5, DDPO's per-GPU batch,
          full-size ImageReward (random init) as the reward, bf16 frozen weights (GPU);
- sd15-b1: sd15 at sample and train batch 1 (the 12 GB / 8 GB with checkpointing goal).

Each run does one warm-up epoch and reports the next ones. FLOPs are counted with
torch's FlopCounterMode on one call of each piece (UNet sampling call, VAE decode,
reward, training step with backward) and multiplied by the calls an epoch makes.

What kvablack/ddpo-pytorch (scripts/train.py) and TRL's DDPOTrainer do per epoch that
this trainer does not (both read, neither vendored); the "avoided" columns measure it
on the same model and settings:
- run the text encoder on every sampling batch's prompts (we encode each distinct prompt
  once per run and reuse the embedding, also at training time);
- keep every trajectory twice (`latents[:, :-1]` and `latents[:, 1:]` as separate
  tensors; TRL also stores a copy of the negative-prompt embedding per sample) and, per
  inner epoch, re-gather all of them with fancy indexing for the batch and the per-sample
  time shuffles (we keep one copy and index [rows, step] at each training step);
- gather prompt token ids across processes and decode them back to strings for the
  per-prompt stat tracker (every process here draws the same global prompts and seeds,
  so only the rewards are gathered);
- compute the DDIM step and its log-probability under autocast, i.e. in fp16 with mixed
  precision, whose resolution (~1e-3 near typical log-probs) is coarser than the 1e-4
  clip range (we always do it in fp32; a correctness point rather than a speed one);
- go through the full diffusers pipeline call per sampling batch (argument checks,
  prompt handling, post-processing) and log a JPEG grid per epoch.
The UNet work per sample is the same in all three (CFG batched into one call at sampling
and training), so the expected gain is the avoided overhead above, not a faster UNet.

Memory estimate without a GPU (`--memory-estimate`): the full SD1.5 at batch 1 with CFG
(a UNet batch of 2) at 512 px, bf16 frozen weights, LoRA rank 4, one DDPO training step's
forward on this machine; it adds the bytes of every weight (ImageReward's included, counted
on the meta device), the LoRA's fp32 weights, gradients and Adam moments, and the tensors
autograd keeps for backward (deduplicated by storage), with and without gradient
checkpointing. Backward adds transient activation gradients (typically a few hundred MB),
and a CUDA allocator some fragmentation, so read it as a floor with a margin to keep.

    OMP_NUM_THREADS=1 python benchmarks/rl.py                 # tiny and small on CPU
    python benchmarks/rl.py --configs sd15 sd15-b1 --device cuda
    python benchmarks/rl.py --configs --memory-estimate       # full SD1.5 memory, any device

Prints a table and writes benchmarks/results/rl.json.

Measured on the shared 2-core development machine (load ~5, so slow and noisy), torch 2.13:

    config | samples | sample s | reward s | train s | epoch s | TFLOP/epoch | TFLOP/s | peak RSS GiB | avoided s
    tiny   | 8       | 3.42     | 0.004    | 9.76    | 13.19   | 0.105       | 0.008   | 0.51         | 0.035
    small  | 4       | 45.74    | 0.000    | 63.95   | 109.69  | 3.92        | 0.036   | 1.63         | 0.145

    gradient accumulation, the same update on 4 samples (load ~3; the same 3.92 TFLOP per epoch):
    small-b4     (one batch of 4)        | peak RSS 2.10 GiB | added by training 0.51 GiB
    small-accum4 (4 micro-batches of 1)  | peak RSS 1.49 GiB | added by training 0.13 GiB

    memory estimate, full SD1.5, DDPO batch 1 + CFG, 512 px, bf16, ImageReward loaded:
      no checkpointing 6.01 GiB = weights 1.99 + ImageReward 0.83 + LoRA/Adam 0.01 + saved activations 3.18
      checkpointing    3.31 GiB = weights 1.99 + ImageReward 0.83 + LoRA/Adam 0.01 + saved activations 0.48
    (floors; the 12 GB / 8 GB goals leave room for backward transients and the VAE decode).
No GPU was lent when this was written: the sd15 rows and utilisation still need a GPU run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructbooth.components import small_sd15_components, sd15_configs, build_components, tiny_components  # noqa: E402
from instructbooth.encoding import decode_latents, encode_prompts, latent_shape  # noqa: E402
from instructbooth.files import write_json  # noqa: E402
from instructbooth.prompts import RLPrompts, Subject  # noqa: E402
from instructbooth.rl.config import RLConfig  # noqa: E402
from instructbooth.rl.trainer import train_rl  # noqa: E402
from instructbooth.sampling import guided_noise_prediction  # noqa: E402

PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}  # dense tensor-core peaks (SXM)

# Throughput settings: one image per prompt, one micro-batch per update, every step trained (as measured
# before the recipe's defaults changed; they do not change the work per sample).
THROUGHPUT = dict(images_per_prompt=1, advantage="tracker", gradient_accumulation_steps=1, timestep_window=1.0)
SETTINGS = {
    "tiny": dict(height=32, width=32, sample_steps=10, guidance=5.0, sample_batch_size=4, sample_batches=2,
                 train_batch_size=4),
    "small": dict(height=128, width=128, sample_steps=10, guidance=5.0, sample_batch_size=4, sample_batches=1,
                  train_batch_size=2),
    "sd15": dict(height=512, width=512, sample_steps=50, guidance=5.0, sample_batch_size=8, sample_batches=1,
                 train_batch_size=4, mixed_precision="bf16"),
    "sd15-b1": dict(height=512, width=512, sample_steps=50, guidance=5.0, sample_batch_size=1, sample_batches=1,
                    train_batch_size=1, mixed_precision="bf16"),
}
# Gradient accumulation: the same 4 samples per update as one batch of 4 or as 4 micro-batches of 1.
SETTINGS["small-b4"] = dict(SETTINGS["small"], train_batch_size=4)
SETTINGS["small-accum4"] = dict(SETTINGS["small"], train_batch_size=1, gradient_accumulation_steps=4)
SETTINGS = {name: {**THROUGHPUT, **values} for name, values in SETTINGS.items()}


def brightness(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3))


def build(name: str, device: str):
    """(components, reward function) of a configuration."""
    base = name.split("-")[0]  # small-b4, small-accum4: the small model
    if base in ("tiny", "small"):
        components = tiny_components(0) if base == "tiny" else small_sd15_components(0)
        return (components if device == "cpu" else components.to(device)), brightness
    from instructbooth.rewards import ImageReward, ImageRewardConfig, random_image_reward_model

    components = build_components(*sd15_configs(), seed=0).to(device)
    scorer = ImageReward(random_image_reward_model(ImageRewardConfig.official(), device=device, dtype=torch.bfloat16))
    return components, scorer


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process's resident set
    sampled every 2 ms from /proc (torch's CPU allocations are invisible to tracemalloc)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = self.start = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = _rss()
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._running = False
            self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def epoch_flops(components, reward, config: RLConfig, device: str) -> dict[str, float]:
    """FLOPs of one epoch per phase, from one counted call of each piece."""
    b, t = config.sample_batch_size, config.train_batch_size
    shape = latent_shape(components, config.height, config.width)
    cond = encode_prompts(components, ["sks plushie riding a bicycle"] * b).detach()
    uncond = encode_prompts(components, [""]).detach()
    x = torch.randn(b, *shape, device=device)
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" else None
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        unet_call = count_flops(lambda: guided_noise_prediction(components.unet, x, 501, cond, uncond, config.guidance))
        decode = count_flops(lambda: decode_latents(components, x))
        images = decode_latents(components, x)
        reward_call = count_flops(lambda: reward(images, ["a plushie riding a bicycle"] * b, [{}] * b))
    xt = torch.randn(t, *shape, device=device, requires_grad=True)

    def train_step():
        with autocast:
            out = guided_noise_prediction(components.unet, xt, 501, cond[:t], uncond, config.guidance)
        out.float().square().mean().backward()

    train_call = count_flops(train_step)
    batches, steps = config.sample_batches, config.sample_steps
    optimizer_steps = config.inner_epochs * config.samples_per_epoch // t
    return {"sample": batches * (steps * unet_call + decode), "reward": batches * reward_call,
            "train": optimizer_steps * config.train_timesteps * train_call}


def avoided_seconds(components, config: RLConfig, device: str) -> dict[str, float]:
    """Time per epoch of the work kvablack/TRL do that this trainer skips (see the docstring)."""
    n = config.samples_per_epoch
    prompts = [f"sks plushie riding a bicycle {i}" for i in range(config.sample_batch_size)]
    with torch.no_grad():
        encode = _timed(lambda: encode_prompts(components, prompts), device) * config.sample_batches
    shape = latent_shape(components, config.height, config.width)
    latents = torch.randn(n, config.sample_steps, *shape, device=device)
    next_latents = latents.clone()

    def reshuffle():
        perm = torch.randperm(n, device=device)
        perms = torch.stack([torch.randperm(config.sample_steps, device=device) for _ in range(n)])
        rows = torch.arange(n, device=device)[:, None]
        for tensor in (latents, next_latents):
            tensor[perm][rows, perms].contiguous()

    shuffle = _timed(reshuffle, device) * config.inner_epochs
    ids = components.tokenizer(prompts * config.sample_batches, padding="max_length", return_tensors="pt").input_ids
    decode = _timed(lambda: components.tokenizer.batch_decode(ids.numpy(), skip_special_tokens=True), device)
    trajectory_bytes = latents.numel() * latents.element_size()
    return {"text_encoder": encode, "reshuffle": shuffle, "prompt_decode": decode,
            "extra_trajectory_gib": trajectory_bytes / 2**30}


def _timed(fn, device: str, repeats: int = 3) -> float:
    fn()
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - began) / repeats


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_config(name: str, device: str, epochs: int, checkpointing: bool) -> dict:
    components, reward = build(name, device)
    config = RLConfig(**SETTINGS[name], epochs=epochs + 1, heldout_every=0, gradient_checkpointing=checkpointing,
                      tracker_min_count=2)
    prompts = RLPrompts.default(Subject("sks", "plushie"), heldout=None)
    flops = epoch_flops(components, reward, config, device)
    avoided = avoided_seconds(components, config, device)
    with PeakMemory(device) as memory:
        result = train_rl(components, reward, prompts, config)
    measured = result.metrics[1:]  # the first epoch warms up
    times = {k: sum(e["time"][k] for e in measured) / len(measured) for k in ("sample", "reward", "train", "total")}
    achieved = {k: flops[k] / max(times[k], 1e-9) for k in ("sample", "reward", "train")}
    total_flops = sum(flops.values())
    peak = _peak_tflops(device, config.mixed_precision)
    avoided_total = avoided["text_encoder"] + avoided["reshuffle"] + avoided["prompt_decode"]
    return {
        "config": name, "device": _device_name(device), "samples_per_epoch": config.samples_per_epoch,
        "sample_steps": config.sample_steps, "resolution": config.height, "guidance": config.guidance,
        "gradient_checkpointing": checkpointing, "seconds": times, "epoch_tflop": total_flops / 1e12,
        "achieved_tflops": {k: v / 1e12 for k, v in achieved.items()},
        "utilisation": (total_flops / times["total"] / 1e12 / peak) if peak else None,
        "peak_memory_gib": memory.gib, "peak_memory_kind": "cuda allocated" if memory.cuda else "process RSS",
        "memory_added_by_training_gib": (memory.peak - memory.start) / 2**30,
        "avoided_seconds_per_epoch": avoided_total, "avoided": avoided,
    }


def _peak_tflops(device: str, precision: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["bf16" if precision in ("bf16", "fp16") else "fp32"]
    return None


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or 'unknown'}, {torch.get_num_threads()} threads)"


def memory_estimate(device: str, checkpointing: bool) -> dict:
    """GiB of DDPO's training step at batch 1 with CFG on the full SD1.5 (see the docstring)."""
    from instructbooth.rewards import ImageRewardConfig
    from instructbooth.rewards.image_reward.model import ImageRewardModel
    from instructbooth.rl.ddpo import ddpo_loss
    from instructbooth.rl.policy import Policy
    from instructbooth.sampling import ddim_schedule, ddim_step, gaussian_log_prob
    from instructbooth.training import Precision, gradient_checkpointing

    components = build_components(*sd15_configs(), seed=0)
    components = components if device == "cpu" else components.to(device)
    config = RLConfig(**SETTINGS["sd15-b1"])
    policy = Policy.prepare(components, config, None)
    precision = Precision.create("bf16", device)
    precision.cast_frozen(components.modules(), policy.params)
    with torch.device("meta"):
        reward_model = ImageRewardModel(ImageRewardConfig.official())
    gib = 2**30
    weights = sum(t.numel() * t.element_size() for m in components.modules() for t in [*m.parameters(), *m.buffers()])
    lora = sum(p.numel() * 4 for p in policy.params)
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    cond = encode_prompts(components, ["sks plushie riding a bicycle"]).detach()
    uncond = encode_prompts(components, [""]).detach()
    x = torch.randn(1, 4, 64, 64, device=device)
    schedule = ddim_schedule(components.scheduler, 50).to(device)
    began = time.perf_counter()
    with gradient_checkpointing([components.unet], checkpointing), precision.autocast(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = guided_noise_prediction(components.unet, x, 501, cond, uncond, 5.0)
        step = ddim_step(schedule, out, 501, x, 1.0, prev_sample=x)
        loss = ddpo_loss(gaussian_log_prob(x, step.mean, step.std), torch.zeros(1), torch.ones(1), 1e-4).loss
    seconds = time.perf_counter() - began
    del loss, out, step
    parts = {"sd15_weights_bf16": weights / gib,
             "imagereward_weights_bf16": sum(p.numel() for p in reward_model.parameters()) * 2 / gib,
             "lora_weights_grads_adam_fp32": 4 * lora / gib, "saved_activations": sum(saved.values()) / gib}
    return {"gradient_checkpointing": checkpointing, "gib": parts, "total_gib": sum(parts.values()),
            "forward_seconds": seconds, "device": _device_name(device)}


def print_table(rows: list[dict]) -> None:
    head = ("config", "samples", "sample s", "reward s", "train s", "epoch s", "TFLOP/epoch", "TFLOP/s", "util",
            "peak GiB", "avoided s")
    print(" | ".join(head))
    for r in rows:
        s = r["seconds"]
        rate = r["epoch_tflop"] / max(s["total"], 1e-9)
        util = f"{100 * r['utilisation']:.1f}%" if r["utilisation"] else "-"
        print(" | ".join([r["config"] + (" +ckpt" if r["gradient_checkpointing"] else ""), str(r["samples_per_epoch"]),
                          f"{s['sample']:.2f}", f"{s['reward']:.3f}", f"{s['train']:.2f}", f"{s['total']:.2f}",
                          f"{r['epoch_tflop']:.4f}", f"{rate:.4f}", util, f"{r['peak_memory_gib']:.2f}",
                          f"{r['avoided_seconds_per_epoch']:.3f}"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=["tiny", "small"], choices=sorted(SETTINGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs after the warm-up one")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--memory-estimate", action="store_true", help="full SD1.5 batch-1 DDPO memory (see above)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("results") / "rl.json"))
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        if name.startswith("sd15") and not args.device.startswith("cuda"):
            print(f"skipping {name}: the full SD1.5 configuration needs a GPU (--device cuda)")
            continue
        rows.append(run_config(name, args.device, args.epochs, args.gradient_checkpointing))
        print_table(rows[-1:])
    print_table(rows)
    memory = []
    if args.memory_estimate:
        for checkpointing in (False, True):
            memory.append(memory_estimate(args.device, checkpointing))
            parts = ", ".join(f"{k} {v:.2f}" for k, v in memory[-1]["gib"].items())
            print(f"SD1.5 DDPO batch 1 + CFG, checkpointing {checkpointing}: {memory[-1]['total_gib']:.2f} GiB ({parts})")
    write_json(args.output, {"torch": torch.__version__, "rows": rows, "memory_estimate": memory})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
