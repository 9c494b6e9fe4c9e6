"""A pair folder: manifest.json (the run and every prompt's record), pairs.jsonl (the training
pairs, one JSON object a line) and images/*.png (8-bit, what the judge scored)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..files import atomic_write, write_json, write_text
from ..images import to_uint8

KINDS = ("self", "cross")
MANIFEST, PAIRS_FILE, IMAGE_FOLDER = "manifest.json", "pairs.jsonl", "images"


@dataclass(frozen=True)
class PreferencePair:
    """One training pair: under `prompt`, `winner` is preferred to `loser`."""

    id: str
    kind: str  # "self" or "cross"
    prompt: str  # the text the images are conditioned on in training (as generated)
    judge_prompt: str  # the text the judge scored both images against
    winner: str  # image file, relative to the store folder
    loser: str
    winner_score: float  # the judge's reward of the winner under judge_prompt
    loser_score: float
    theme: str = ""
    subtopic: str = ""
    attribute: str = ""  # cross pairs: the attribute the two prompts differ in

    @property
    def margin(self) -> float:
        return self.winner_score - self.loser_score

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PreferencePair":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


class PairStore:
    """A pair folder: manifest.json, pairs.jsonl and images/*.png."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def pairs_path(self) -> Path:
        return self.folder / PAIRS_FILE

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.manifest_path} is not valid JSON ({error}); "
                             "delete the folder to start over") from None

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return bool(manifest and manifest.get("complete"))

    def pairs(self, kinds: Sequence[str] = KINDS) -> list[PreferencePair]:
        """The stored pairs of the given kinds, in prompt order."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown pair kinds {unknown}; kinds are {KINDS}")
        if not self.pairs_path.is_file():
            raise FileNotFoundError(f"no {PAIRS_FILE} in {self.folder}; build the pairs first (build_pairs)")
        lines = self.pairs_path.read_text(encoding="utf-8").splitlines()
        pairs = [PreferencePair.from_dict(json.loads(line)) for line in lines if line.strip()]
        return [p for p in pairs if p.kind in kinds]

    def image(self, relative: str) -> torch.Tensor:
        """A stored image as float32 [3, H, W] in [0, 1]."""
        from PIL import Image

        path = self.folder / relative
        if not path.is_file():
            raise FileNotFoundError(f"pair image {path} is missing; the pair folder is incomplete, rebuild it")
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255

    def save_image(self, relative: str, image: torch.Tensor) -> None:
        """[3, H, W] in [0, 1] (already on the 8-bit grid) as a PNG, atomically."""
        from PIL import Image

        picture = Image.fromarray(to_uint8(image))
        atomic_write(self.folder / relative, lambda tmp: picture.save(tmp, format="PNG"))

    def write(self, manifest: dict) -> None:
        """manifest.json, then pairs.jsonl derived from its records."""
        write_json(self.manifest_path, manifest)
        lines = [json.dumps(p, sort_keys=True) for record in manifest["records"] for p in record["pairs"]]
        write_text(self.pairs_path, "".join(line + "\n" for line in lines))

    def clear(self) -> None:
        """Deletes the manifest, the pairs and the stored PNGs (nothing else in the folder)."""
        self.manifest_path.unlink(missing_ok=True)
        self.pairs_path.unlink(missing_ok=True)
        folder = self.folder / IMAGE_FOLDER
        if folder.is_dir():
            for path in folder.glob("*.png"):
                path.unlink(missing_ok=True)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images rounded to the 8-bit grid (float32 in [0, 1]): exactly what a PNG stores."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255
