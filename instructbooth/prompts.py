"""Prompt sets and identifier templating for the InstructBooth RL scheme.

A prompt template marks the subject with `{id}`: "{id} riding a bicycle". With the
identifier it becomes "sks plushie riding a bicycle"; without it, "a plushie riding a
bicycle". InstructBooth trains on both, mixed at a ratio, because the personalized model
alone rarely produces the good samples RL learns from. Default action and interaction
sets and a held-out set ship in `prompts/*.txt`; users bring their own text files, one
template per line, `#` starting a comment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

PLACEHOLDER = "{id}"
PROMPT_PACKAGE = __package__  # "instructbooth", or "<pack>.instructbooth" inside ComfyUI
PROMPT_FOLDER = "prompts"
DEFAULT_TRAIN_SETS = ("actions", "interactions")
HELDOUT_SET = "heldout"
IDENTIFIER, PLAIN, HELDOUT = "identifier", "plain", "heldout"  # prompt groups in metrics


@dataclass(frozen=True)
class Subject:
    """What the personalized model learned: e.g. identifier "sks", class noun "plushie"."""

    identifier: str  # the rare token bound to the subject
    class_noun: str  # the subject's class, written without an article
    description: str = ""  # optional detailed description, e.g. "a green round plushie with a red nose"

    def __post_init__(self):
        if not self.identifier.strip() or not self.class_noun.strip():
            raise ValueError("a Subject needs a non-empty identifier and class noun, e.g. Subject('sks', 'plushie')")

    @property
    def trigger_phrase(self) -> str:
        return f"{self.identifier} {self.class_noun}"

    @property
    def plain_phrase(self) -> str:
        return f"{indefinite_article(self.class_noun)} {self.class_noun}"


def indefinite_article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def fill(template: str, phrase: str) -> str:
    """`template` with every `{id}` replaced by `phrase`; any other {placeholder} is an error
    (it would reach the model as literal text)."""
    if PLACEHOLDER not in template:
        raise ValueError(f"prompt template {template!r} has no {PLACEHOLDER} placeholder; "
                         "write e.g. '{id} riding a bicycle'")
    unknown = sorted(set(re.findall(r"\{[^{}]*\}", template)) - {PLACEHOLDER})
    if unknown:
        raise ValueError(f"prompt template {template!r} has unknown placeholders {', '.join(unknown)}; "
                         f"only {PLACEHOLDER} (the subject) is filled in")
    return template.replace(PLACEHOLDER, phrase)


def with_identifier(template: str, subject: Subject, describe: bool = False) -> str:
    """"sks plushie riding a bicycle" (+ ", <description>" when `describe`)."""
    prompt = fill(template, subject.trigger_phrase)
    return f"{prompt}, {subject.description}" if describe and subject.description else prompt


def without_identifier(template: str, subject: Subject) -> str:
    """"a plushie riding a bicycle"."""
    return fill(template, subject.plain_phrase)


def parse_prompt_lines(text: str) -> list[str]:
    """Non-empty lines without `#` comments, stripped."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    templates = parse_prompt_lines(path.read_text(encoding="utf-8"))
    if not templates:
        raise ValueError(f"prompt file {path} has no prompts (one per line; '#' starts a comment)")
    return templates


def shipped_prompt_sets() -> list[str]:
    folder = resources.files(PROMPT_PACKAGE) / PROMPT_FOLDER
    return sorted(p.name[: -len(".txt")] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_prompt_set(name: str) -> list[str]:
    """A shipped set by name ("actions", "interactions", "heldout") or a path to a text file."""
    if name.endswith(".txt") or "/" in name or "\\" in name:
        return read_prompt_file(name)
    path = resources.files(PROMPT_PACKAGE) / PROMPT_FOLDER / f"{name}.txt"
    if not path.is_file():
        shipped = ", ".join(shipped_prompt_sets())
        raise ValueError(f"no shipped prompt set {name!r}; shipped: {shipped} (or give a .txt path)")
    return parse_prompt_lines(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class DrawnPrompt:
    """One prompt drawn for a sample."""

    text: str  # what the model is conditioned on
    reward_text: str  # what the reward scores the image against
    template: int  # index into RLPrompts.templates (or .heldout)
    group: str  # IDENTIFIER, PLAIN or HELDOUT


def _stochastic_round(value: float, generator: torch.Generator) -> int:
    """floor(value), plus 1 with probability value - floor(value) (no draw for whole numbers)."""
    whole = math.floor(value + 1e-9)
    fraction = value - whole
    if fraction <= 1e-9:
        return whole
    return whole + int(float(torch.rand((), generator=generator)) < fraction)


@dataclass(frozen=True)
class RLPrompts:
    """Training and held-out prompt templates for one subject."""

    templates: tuple[str, ...]  # with {id}; trained on
    subject: Subject
    heldout: tuple[str, ...] = ()  # with {id}; only evaluated (always with the identifier)

    def __post_init__(self):
        if not self.templates:
            raise ValueError("RLPrompts needs at least one training template")
        for template in (*self.templates, *self.heldout):
            fill(template, "x")  # raises a clear error for a template without {id}
        overlap = set(self.templates) & set(self.heldout)
        if overlap:
            raise ValueError(f"held-out templates also in the training set: {sorted(overlap)[:3]}")

    @classmethod
    def default(cls, subject: Subject, sets: Sequence[str] = DEFAULT_TRAIN_SETS, heldout: str | None = HELDOUT_SET):
        templates = tuple(t for name in sets for t in load_prompt_set(name))
        return cls(templates, subject, tuple(load_prompt_set(heldout)) if heldout else ())

    def draw(
        self,
        count: int,
        identifier_ratio: float,
        generator: torch.Generator,
        describe: bool = False,
        reward_plain: bool = True,
    ) -> list[DrawnPrompt]:
        """`count` prompts, templates uniform at random; ratio * count of them with the
        identifier, at random positions (a fractional count is rounded up with the
        probability of its fraction, so the ratio holds on average even for 1 prompt).
        The reward text is the plain prompt when `reward_plain` (a reward model does not
        know the identifier token)."""
        if not 0.0 <= identifier_ratio <= 1.0:
            raise ValueError(f"identifier_ratio must be in [0, 1], got {identifier_ratio}")
        picks = torch.randint(len(self.templates), (count,), generator=generator).tolist()
        n_identifier = _stochastic_round(identifier_ratio * count, generator)
        flags = torch.zeros(count, dtype=torch.bool)
        flags[torch.randperm(count, generator=generator)[:n_identifier]] = True
        return [self._drawn(i, bool(f), describe, reward_plain) for i, f in zip(picks, flags.tolist())]

    def _drawn(self, index: int, identifier: bool, describe: bool, reward_plain: bool) -> DrawnPrompt:
        template = self.templates[index]
        plain = without_identifier(template, self.subject)
        if not identifier:
            return DrawnPrompt(plain, plain, index, PLAIN)
        text = with_identifier(template, self.subject, describe)
        return DrawnPrompt(text, plain if reward_plain else text, index, IDENTIFIER)

    def heldout_prompts(self, describe: bool = False, reward_plain: bool = True) -> list[DrawnPrompt]:
        """Every held-out template with the identifier, in file order."""
        drawn = []
        for index, template in enumerate(self.heldout):
            text = with_identifier(template, self.subject, describe)
            reward = without_identifier(template, self.subject) if reward_plain else text
            drawn.append(DrawnPrompt(text, reward, index, HELDOUT))
        return drawn
