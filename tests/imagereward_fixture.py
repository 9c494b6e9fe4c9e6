"""The ImageReward parity fixture, rebuilt from the compact copy in tests/data/imagereward_tiny.

The reference package (`image-reward` 1.5) made the fixture on a tiny random model (see the
README there). The repository keeps it compact: the weights without the rows of the 30524-word
embedding that no fixture prompt uses (3.9 MB of 5.3 MB), and the reference's preprocessed
pixels as the 8-bit levels they were normalised from (exact: the reference normalised
level / 255 in float32, and so does `normalize`). `materialize(folder)` writes the fixture in
its original layout (tiny_imagereward.safetensors with official key names and full shapes,
pixel_values.safetensors, vocab.txt, config.json, expected.json and the four images), so the
tests read it as they would read the reference's own files. The unused embedding rows get
seeded random values of the same spread: scores of the fixture prompts are exactly the
reference's; other prompts score with a model that is still random.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COMPACT = Path(__file__).resolve().parent / "data" / "imagereward_tiny"
WORD_EMBEDDINGS = "blip.text_encoder.embeddings.word_embeddings.weight"
VOCAB = Path(__file__).resolve().parents[1] / "instructbooth" / "configs" / "imagereward" / "vocab.txt"
COPIED = ("config.json", "expected.json", "gray_150x400.png", "rgb_224x224.png", "rgb_300x200.png",
          "rgba_512x384.png")


def materialize(folder: Path) -> Path:
    """Writes the full fixture into `folder` (created) and returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(COMPACT / name, folder / name)
    shutil.copyfile(VOCAB, folder / "vocab.txt")
    save_file(_weights(), folder / "tiny_imagereward.safetensors")
    save_file(_pixels(), folder / "pixel_values.safetensors")
    return folder


def _weights() -> dict[str, torch.Tensor]:
    compact = load_file(COMPACT / "weights_compact.safetensors")
    rows, ids = compact.pop("word_embeddings.rows"), compact.pop("word_embeddings.ids")
    shape = tuple(compact.pop("word_embeddings.shape").tolist())
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(shape, generator=generator) * rows.std() + rows.mean()
    embeddings[ids] = rows
    return {**compact, WORD_EMBEDDINGS: embeddings}


def _pixels() -> dict[str, torch.Tensor]:
    from instructbooth.rewards.image_reward.preprocess import normalize

    compact = load_file(COMPACT / "reference_pixels.safetensors")
    levels = compact.pop("levels")
    pixels = {f"pixel_values.{j}": normalize(levels[j : j + 1].float().div(255.0)) for j in range(len(levels))}
    return {**pixels, **compact}
