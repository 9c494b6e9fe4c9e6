"""Instruction prompts of the demo world and how an image is scored against one.

Where a prompt names the subject (`layout_prompt`), the prompts of each split with or
without the identifier (`instruction_prompts`), the class-noun form the method's reward
reads (`canonical_prompt`, `class_prompt`), the RL reward (`DemoReward`) and the per-image
scores (`score_image`: alignment, subject fidelity and their joint headline metric).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checker import AlignmentReward, CheckerConfig, check, read_image
from .prompts import PromptSpec, format_prompt, parse_prompt, subject_phrase
from .world import background_phrase, parse_caption, scenes

if TYPE_CHECKING:
    from .settings import DemoConfig


# "before" is the grammar of demo/prompts.py: "sks toy next to two red circles on a black background".
# "after" names the subject after the scene: "two red circles on a black background next to sks toy".
# The demo model's text encoder reads a word well only at the position pretraining put it
# (captions always start with the count word): one word in front of a caption drops the base
# model's background accuracy from 1.0 to about 0.5, the 9 words of the detailed subject
# phrase to chance, and RL then never sees a sample with the asked-for objects to learn from.
# Under the causal text encoder, words after the caption leave its tokens as they were.
LAYOUTS = ("after", "before")


def layout_prompt(spec: PromptSpec, layout: str) -> str:
    """A subject prompt in a layout; world captions and "before" are demo/prompts.py's form."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "before" or spec.subject is None:
        return format_prompt(spec)
    scene = spec.scene.caption() if spec.scene is not None else f"on {background_phrase(spec.background)}"
    return f"{scene} next to {subject_phrase(spec.subject, spec.detailed)}"


def canonical_prompt(prompt: str) -> str:
    """The demo/prompts.py form of a prompt in either layout (what the checker parses)."""
    head, sep, tail = " ".join(prompt.lower().replace(",", " ").split()).rpartition(" next to ")
    kinds = [(k, d) for k in ("identifier", "class") for d in (True, False) if tail == subject_phrase(k, d)]
    if not sep or not kinds:
        return prompt
    (kind, detailed), words = kinds[0], head.split()
    if head.startswith("on a ") and len(words) == 4:
        return format_prompt(PromptSpec(background=words[2], subject=kind, detailed=detailed))
    scene = parse_caption(head)
    return format_prompt(PromptSpec(scene.background, scene.count, scene.colour, scene.shape, kind, detailed))


class DemoReward(AlignmentReward):
    """The exact alignment reward (checker.py) for prompts in either layout.

    With `subject_weight` w, a subject prompt's reward is w x (subject holds) + (1 - w) x
    (share of its instruction attributes that hold), so the subject is not traded for the
    objects (as one attribute of five it is worth less than count, colour and shape together)."""

    name = "demo_alignment"

    def __init__(self, config: CheckerConfig = CheckerConfig(), subject_weight: float | None = None):
        super().__init__(config)
        if subject_weight is not None and not 0.0 <= subject_weight <= 1.0:
            raise ValueError(f"subject_weight must be in [0, 1] or None, got {subject_weight}")
        self.subject_weight = subject_weight

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        return super().__call__(images, [canonical_prompt(p) for p in prompts], metadata)

    def value(self, result: dict[str, bool]) -> float:
        if self.subject_weight is None or "subject" not in result:
            return super().value(result)
        instruction = float(np.mean([ok for name, ok in result.items() if name != "subject"]))
        return self.subject_weight * float(result["subject"]) + (1 - self.subject_weight) * instruction



def instruction_prompts(split: str, subject: str | None, config: "DemoConfig") -> list[str]:
    """The split's scenes (evenly spaced subset per config.evaluation) as prompts."""
    specs = instruction_specs(split, subject, config.detailed, config.evaluation.prompts_per_split)
    return [layout_prompt(s, config.layout) for s in specs]


def instruction_specs(split: str, subject: str | None, detailed: bool, limit: int | None = None) -> list[PromptSpec]:
    """The split's scenes as prompts with the subject ("identifier", "class") or without (None).
    `limit` keeps an evenly spaced subset."""
    chosen = scenes(split)
    if limit is not None and limit < len(chosen):
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, limit).round().astype(int)]
    return [PromptSpec(s.background, s.count, s.colour, s.shape, subject, detailed and subject is not None)
            for s in chosen]


def class_prompt(prompt: str) -> str:
    """The prompt with the identifier replaced by the class noun, in the checker's form:
    "sks toy next to two red circles ..." -> "a toy next to two red circles ..." (what the
    method's reward scores, as ImageReward scores "a plushie riding a bicycle")."""
    spec = parse_prompt(canonical_prompt(prompt))
    if spec.subject != "identifier":
        return format_prompt(spec)
    return format_prompt(replace(spec, subject="class", detailed=False))


def score_image(image: torch.Tensor, prompt: str, config: CheckerConfig = CheckerConfig()) -> dict[str, float]:
    """One image's scores against its prompt:

    - alignment: share of the instruction's attributes (count, colour, shape, background) that hold;
    - exact: all of them hold;
    - fidelity: the subject's likeness (0..1); subject: fidelity at the checker's threshold;
    - subject_alignment: alignment x subject (the headline: the instruction counts only where
      the subject is there); subject_exact: subject and every instruction attribute;
    - reward: the method's RL reward, the share of the attributes of the class-noun prompt
      ("a toy next to ...": a toy-coloured object is present, count, colour, shape, background).
    """
    reading = read_image(image, config)
    spec = parse_prompt(canonical_prompt(prompt))
    result = check(reading, spec, config)
    instruction = [ok for name, ok in result.items() if name != "subject"]
    alignment, exact = float(np.mean(instruction)), float(all(instruction))
    subject = float(reading.subject_fidelity >= config.subject_threshold) if spec.subject == "identifier" else 0.0
    return {
        "alignment": alignment,
        "exact": exact,
        "fidelity": reading.subject_fidelity,
        "subject": subject,
        "subject_alignment": alignment * subject,
        "subject_exact": exact * subject,
        "reward": float(np.mean(list(check(reading, parse_prompt(class_prompt(prompt)), config).values()))),
    }


HEADLINE = "subject_alignment"  # the demo's headline metric (score_image)
