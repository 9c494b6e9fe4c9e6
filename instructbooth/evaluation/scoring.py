"""Scoring generated images the way the papers do: CLIP-T against the prompt written without the
identifier, CLIP-I and DINO against the reference photos, and optionally ImageReward.

`SubjectScorer` embeds the reference photos once per model and returns, for a batch, one list of
numbers per metric. `scoring_text` turns a prompt template into the text CLIP and ImageReward
read ("a {id} {cls} in the snow" -> "a plushie in the snow": neither knows the identifier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor

from ..prompts import Subject, without_identifier
from .clip_embedder import ClipEmbedder
from .dino_embedder import DinoEmbedder
from .image_processing import Images
from .similarity import mean_reference_cosine, paired_cosine

METRICS = ("clip_t", "clip_i", "dino", "image_reward")  # in report order
METRIC_TITLES = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino": "DINO", "image_reward": "ImageReward"}


def scoring_text(template: str, subject: Subject) -> str:
    """The prompt without the identifier ("{subject} riding a horse" -> "a plushie riding a horse",
    "a {id} {cls} in the snow" -> "a plushie in the snow")."""
    return without_identifier(template.strip(), subject)


@dataclass
class SubjectScorer:
    """The metrics one evaluation computes; any of the models may be absent."""

    references: Images  # the subject's photos, [P, 3, H, W] or P tensors [3, H, W], in [0, 1]
    clip: ClipEmbedder | None = None
    dino: DinoEmbedder | None = None
    image_reward: object | None = None  # a RewardFn (e.g. ImageReward)
    _reference_embeddings: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.clip is None and self.dino is None and self.image_reward is None:
            raise ValueError("nothing to measure: give a CLIP (CLIP-T, CLIP-I), a DINO or ImageReward")
        if len(self.references) == 0:
            raise ValueError("no reference photos: CLIP-I and DINO compare the images with the subject's photos")

    @property
    def metrics(self) -> list[str]:
        present = {"clip_t": self.clip, "clip_i": self.clip, "dino": self.dino, "image_reward": self.image_reward}
        return [name for name in METRICS if present[name] is not None]

    def reference_embeddings(self, kind: str) -> Tensor:
        if kind not in self._reference_embeddings:
            embedder = self.clip if kind == "clip" else self.dino
            self._reference_embeddings[kind] = embedder.embed_images(self.references)
        return self._reference_embeddings[kind]

    def score(self, images: Tensor, texts: Sequence[str]) -> dict[str, list[float]]:
        """[B, 3, H, W] in [0, 1] and B scoring texts -> {metric: B numbers}."""
        scores: dict[str, list[float]] = {}
        if self.clip is not None:
            embedded = self.clip.embed_images(images)
            texts_embedded = self.clip.embed_texts(list(texts))
            scores["clip_t"] = paired_cosine(embedded, texts_embedded).tolist()
            scores["clip_i"] = mean_reference_cosine(embedded, self.reference_embeddings("clip")).tolist()
        if self.dino is not None:
            scores["dino"] = mean_reference_cosine(self.dino.embed_images(images),
                                                   self.reference_embeddings("dino")).tolist()
        if self.image_reward is not None:
            metadata = [{} for _ in texts]
            scores["image_reward"] = self.image_reward(images, list(texts), metadata).float().cpu().tolist()
        return scores
