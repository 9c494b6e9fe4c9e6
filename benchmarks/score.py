"""ImageReward scoring speed and memory: batched scorer vs the reference's one-image loop.

Builds the full-size architecture (ViT-L/16 + BERT-base, about 450M parameters) with random
weights (speed does not depend on the values), makes N random 512x512 PIL images (SD1.5's
output size) and times, for each batch size, `ImageReward.score(images, prompt)` through the
PIL path (the reference's preprocessing), and the tensor path at the largest batch size. The baseline emulates
the reference package's `score()` called once per image: tokenize the prompt again,
preprocess one image, one forward pass of batch 1.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` above the model's own; on
CPU the peak resident set size (sampled every 2 ms from /proc) above the size before the run,
after glibc's malloc_trim has handed freed memory back (torch's allocations are invisible to
tracemalloc).

    OMP_NUM_THREADS=1 python benchmarks/score.py                  # CPU, batches 1 2 4, 4 images
    python benchmarks/score.py --device cuda --dtype float16 --images 32 --batch-sizes 1 4 8 16 32

Prints a table and writes benchmarks/results/score.json.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructbooth.files import write_json  # noqa: E402
from instructbooth.rewards import ImageReward, ImageRewardConfig, parse_dtype, random_image_reward_model  # noqa: E402
from instructbooth.rewards.image_reward.preprocess import preprocess_pil  # noqa: E402

PROMPT = "a photo of sks plushie playing basketball, highly detailed"
RESULTS = Path(__file__).resolve().parent / "results" / "score.json"


class PeakMemory:
    """Peak memory above the level at entry, in MiB: CUDA allocator or process RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _release_free_memory()
            self._base = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mib = (peak - self._base) / 2**20


def _release_free_memory() -> None:
    """Returns freed heap pages to the OS (glibc), so RSS growth shows this run's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_images(count: int, size: int = 512, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def reference_style_loop(scorer: ImageReward, images: list[Image.Image], prompt: str) -> torch.Tensor:
    """The reference package's `score(prompt, image)` once per image, on our model."""
    scores = []
    with torch.no_grad():
        for image in images:
            tokens = scorer.tokenize(prompt).to(scorer.device)  # tokenized again every image
            pixels = preprocess_pil(image)[None].to(scorer.device, scorer.dtype)
            scores.append(scorer.model(pixels, tokens.input_ids, tokens.attention_mask).float())
    return torch.cat(scores)


def timed(device: torch.device, run) -> tuple[float, float]:
    """(seconds, peak MiB) of one call of `run()`."""
    _sync(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run()
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mib


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = parse_dtype(args.dtype)
    start = time.perf_counter()
    model = random_image_reward_model(ImageRewardConfig.official(), seed=0, device=device, dtype=dtype)
    build_seconds = time.perf_counter() - start
    scorer = ImageReward(model)
    images = random_images(args.images)
    tensors = torch.stack([torch.from_numpy(np.asarray(i).copy()) for i in images]).to(device).float() / 255
    scorer.score(images[:1], PROMPT)  # warm-up (kernels, tokenizer)
    rows = []
    for batch_size in args.batch_sizes:
        scorer.max_batch_size = batch_size
        seconds, peak = timed(device, lambda: scorer.score(images, PROMPT))
        rows.append(_row("batched, PIL path", batch_size, len(images), seconds, peak))
    scorer.max_batch_size = max(args.batch_sizes)
    scorer.score(tensors[:1], PROMPT)
    seconds, peak = timed(device, lambda: scorer.score(tensors, PROMPT))
    rows.append(_row("batched, tensor path", scorer.max_batch_size, len(images), seconds, peak))
    seconds, peak = timed(device, lambda: reference_style_loop(scorer, images, PROMPT))
    rows.append(_row("one-by-one loop (reference style)", 1, len(images), seconds, peak))
    return {
        "model": "ImageReward full size (random weights)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "images": len(images),
        "image_size": "512x512",
        "build_seconds": round(build_seconds, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }


def _row(method: str, batch_size: int, count: int, seconds: float, peak_mib: float) -> dict:
    return {"method": method, "batch_size": batch_size, "images": count, "seconds": round(seconds, 3),
            "images_per_s": round(count / seconds, 3), "peak_mib": round(peak_mib, 1)}


def format_table(result: dict) -> str:
    head = (f"{result['model']}, {result['parameters'] / 1e6:.0f}M params, {result['device']}, "
            f"{result['dtype']}, {result['threads']} threads, {result['images']} images {result['image_size']}")
    lines = [head, f"{'method':<36} {'batch':>5} {'img/s':>8} {'s':>8} {'peak MiB':>9}"]
    for row in result["rows"]:
        lines.append(f"{row['method']:<36} {row['batch_size']:>5} {row['images_per_s']:>8.3f} "
                     f"{row['seconds']:>8.2f} {row['peak_mib']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    parser.add_argument("--images", type=int, default=4, help="images per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = benchmark(args)
    print(format_table(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
