"""How far each ImageReward input path is from scoring the saved files, on the full-size model.

The full-size architecture (BLIP ViT-L/16 + BERT-base, random normal(0, 0.02) weights) scores
pictures of several sizes and kinds (SD1.5's 512x512, small, large, grey, RGBA with
transparency) four ways, against the score of the PNG that ComfyUI's Save Image writes for the
same tensor (what the reference package reads; our file path equals the reference's). Score
distances depend on the weights: this random model is far less sensitive to pixels than the
reference's own random fixture model (tests/test_image_reward.py) or, likely, the trained one.
Only the exact path's 0 holds for any weights (its pixels are bit-equal to the file's).

- exact:            `score(tensor)`: quantised as Save Image does, then the PIL path;
- differentiable:   `score_differentiable` on the 8-bit picture (as loaded from a file);
- differentiable, continuous: on the float tensor itself (what RL decodes), so the 8-bit
                    quantisation of the file is part of the distance;
- alpha dropped:    the old tensor path for RGBA (alpha dropped before resizing).

Then the dtype question: float16 and bfloat16 against float32 on the files (largest score
difference, prompts whose full ranking of the images changed, whether the best image stays).

    OMP_NUM_THREADS=1 python benchmarks/image_reward_paths.py            # CPU, ~10 min on 1 thread
    python benchmarks/image_reward_paths.py --device cuda

Prints two tables and writes benchmarks/results/image_reward_paths.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instructbooth.files import write_json  # noqa: E402
from instructbooth.rewards import ImageReward, ImageRewardConfig, random_image_reward_model  # noqa: E402

PROMPTS = ("a photo of a plushie riding a bicycle", "two red circles on a black background", "")
CASES = {  # name -> (height, width, channels)
    "rgb 512x512": (512, 512, 3), "rgb 768x512": (512, 768, 3), "rgb 72x96": (72, 96, 3),
    "rgb 1536x2048": (1536, 2048, 3), "grey 400x150": (400, 150, 1), "rgba transparent 384x512": (384, 512, 4),
    "rgba opaque 300x300": (300, 300, 4), "noise 224x224": (224, 224, 3),
}


def picture(name: str, seed: int) -> torch.Tensor:
    """A picture-like [H, W, C] tensor in [0, 1] (smooth colour fields, a hard band); "noise" is noise."""
    height, width, channels = CASES[name]
    generator = torch.Generator().manual_seed(seed)
    if name.startswith("noise"):
        return torch.rand(height, width, channels, generator=generator)
    coarse = torch.rand(1, channels, height // 16 + 2, width // 16 + 2, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)[0]
    image[:, height // 3 : height // 2] = torch.rand(channels, 1, 1, generator=generator)
    if "transparent" in name:
        image[3] = torch.where(image[3] > 0.5, image[3], torch.zeros(()))
    if "opaque" in name:
        image[3] = 1.0
    return image.permute(1, 2, 0)


def save_as_comfyui(image: torch.Tensor, path: Path) -> Path:
    array = np.clip(image.numpy() * 255.0, 0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    Image.fromarray(array[..., 0] if mode == "L" else array, mode).save(path)
    return path


def eight_bit(image: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.clip(image.numpy() * 255.0, 0, 255).astype(np.uint8)).float() / 255


def path_distances(scorer: ImageReward, images: dict[str, torch.Tensor], files: dict[str, Path]) -> list[dict]:
    rows = []
    for name, image in images.items():
        row = {"image": name, "exact": 0.0, "differentiable": 0.0, "differentiable_continuous": 0.0,
               "alpha_dropped": None}
        device = scorer.device
        for prompt in PROMPTS:
            file_score = scorer.score([files[name]], prompt).item()
            with torch.no_grad():
                exact = scorer.score(image[None].to(device), prompt).item()
                loaded = scorer.score_differentiable(eight_bit(image)[None].to(device), prompt).item()
                raw = scorer.score_differentiable(image[None].to(device), prompt).item()
                dropped = (scorer.score_differentiable(eight_bit(image)[None, ..., :3].to(device), prompt).item()
                           if image.shape[-1] == 4 else None)
            row["exact"] = max(row["exact"], abs(exact - file_score))
            row["differentiable"] = max(row["differentiable"], abs(loaded - file_score))
            row["differentiable_continuous"] = max(row["differentiable_continuous"], abs(raw - file_score))
            if dropped is not None:
                row["alpha_dropped"] = max(row["alpha_dropped"] or 0.0, abs(dropped - file_score))
        rows.append(row)
        print(f"  {name}: done", flush=True)
    return rows


def dtype_effects(config: ImageRewardConfig, device: str, files: list[Path]) -> list[dict]:
    reference = None
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        scorer = ImageReward(random_image_reward_model(config, seed=0, device=device, dtype=dtype))
        began = time.perf_counter()
        scores = torch.stack([scorer.score(files, prompt).float().cpu() for prompt in PROMPTS])  # [P, N]
        seconds = time.perf_counter() - began
        if reference is None:
            reference = scores
        changed = sum(not torch.equal(torch.argsort(s, descending=True), torch.argsort(r, descending=True))
                      for s, r in zip(scores, reference))
        best_kept = sum(int(s.argmax()) == int(r.argmax()) for s, r in zip(scores, reference))
        rows.append({"dtype": str(dtype).replace("torch.", ""), "max_diff": float((scores - reference).abs().max()),
                     "rankings_changed": changed, "best_kept": best_kept, "prompts": len(PROMPTS), "seconds": seconds})
        print(f"  {rows[-1]['dtype']}: done", flush=True)
        del scorer
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "image_reward_paths.json")
    args = parser.parse_args(argv)
    config = ImageRewardConfig()  # the official sizes
    scorer = ImageReward(random_image_reward_model(config, seed=0, device=args.device))
    images = {name: picture(name, seed) for seed, name in enumerate(CASES)}
    with tempfile.TemporaryDirectory() as folder:
        files = {name: save_as_comfyui(image, Path(folder) / f"{i}.png") for i, (name, image) in enumerate(images.items())}
        print("input paths (full-size model, float32):", flush=True)
        paths = path_distances(scorer, images, files)
        del scorer
        print("dtypes (file path):", flush=True)
        dtypes = dtype_effects(config, args.device, list(files.values()))
    print("\n| image | exact tensor path | differentiable, 8-bit input | differentiable, float input | alpha dropped first (old) |")
    print("|---|---|---|---|---|")
    for r in paths:
        dropped = f"{r['alpha_dropped']:.2e}" if r["alpha_dropped"] is not None else "-"
        print(f"| {r['image']} | {r['exact']:.1e} | {r['differentiable']:.2e} | {r['differentiable_continuous']:.2e} | "
              f"{dropped} |")
    print(f"\n| dtype | largest score difference to float32 | rankings of {len(CASES)} images changed | "
          "best image kept | seconds |")
    print("|---|---|---|---|---|")
    for r in dtypes:
        print(f"| {r['dtype']} | {r['max_diff']:.4f} | {r['rankings_changed']} of {r['prompts']} | "
              f"{r['best_kept']} of {r['prompts']} | {r['seconds']:.1f} |")
    write_json(args.json, {"device": args.device, "prompts": list(PROMPTS), "paths": paths, "dtypes": dtypes})
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
