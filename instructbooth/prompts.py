"""Prompt sets and the one template grammar of every stage.

Templates name the subject with placeholders, each with one meaning everywhere:

- `{subject}`: the subject phrase, "sks plushie" with the identifier or "a plushie" without;
- `{id}`: the identifier ("sks"); in a prompt made without the identifier it is left out,
  with the space after it ("a {id} {cls} in the snow" -> "a plushie in the snow");
- `{cls}`: the class noun ("plushie"); `{desc}`: " <detailed description>" (with its leading
  space) or nothing.

Personalization captions and templates take any of them ("a photo of {id} {cls}{desc}").
Prompts made with and without the identifier (RL, evaluation, preference pairs, generation)
name the subject with `{subject}` or `{id}`: "{subject} riding a bicycle" becomes "sks plushie
riding a bicycle" or "a plushie riding a bicycle". InstructBooth trains on both, mixed at a
ratio, because the personalized model alone rarely produces the good samples RL learns from.

Migration: before this grammar, those prompts wrote `{id}` for the whole subject phrase. A
template with `{id}` and neither `{subject}` nor `{cls}` is still read that way ("{id} riding a
bicycle" as "{subject} riding a bicycle"), with a FutureWarning naming the rewrite
(`migrate_templates`).

Default action and interaction sets and a held-out set ship in `prompts/*.txt`; users bring
their own text files, one template per line, `#` starting a comment.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

PLACEHOLDER = "{subject}"  # the subject phrase in a prompt made with or without the identifier
SLOTS = ("subject", "id", "cls", "desc")  # every placeholder of the grammar (see the module docstring)
LEGACY_PLACEHOLDER = "{id}"  # the subject phrase before this grammar (migrate_templates)
_SLOT = re.compile(r"\{([^{}]*)\}")
_LEFT_OUT_ID = re.compile(r"\{id\} ?")  # {id} and the space after it, in a prompt without the identifier
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


class TemplateError(ValueError):
    """A prompt template the grammar cannot fill; the message says what to write instead."""


def template_slots(template: str) -> set[str]:
    """The placeholder names in `template` ("{subject} in {cls}" -> {"subject", "cls"})."""
    return set(_SLOT.findall(template))


def fill_template(template: str, subject: Subject, with_identifier: bool = True) -> str:
    """Fills every placeholder of the grammar from `subject`; an unknown one is an error (it
    would reach the model as literal text)."""
    return fill_parts(template, subject.identifier, subject.class_noun, subject.description, with_identifier)


def fill_parts(template: str, identifier: str, class_noun: str, description: str = "",
               with_identifier: bool = True) -> str:
    """`fill_template` from the subject's parts, which may be empty (personalization allows an
    identifier without a class noun: "a photo of {id} {cls}" -> "a photo of sks ")."""
    check_known_slots(template)
    noun = class_noun.strip()
    phrase = f"{identifier} {noun}" if with_identifier else f"{indefinite_article(noun)} {noun}"
    if not with_identifier:
        template = _LEFT_OUT_ID.sub("", template)
    desc = f" {description.strip()}" if description.strip() else ""
    values = {"subject": phrase.strip(), "id": identifier, "cls": class_noun, "desc": desc}
    return _SLOT.sub(lambda match: values[match.group(1)], template)


def check_known_slots(template: str) -> None:
    """Refuses placeholders outside the grammar, naming the four it has."""
    unknown = sorted(template_slots(template) - set(SLOTS))
    if unknown:
        raise TemplateError(f"prompt template {template!r} has unknown placeholders "
                            f"{', '.join('{' + u + '}' for u in unknown)}; the placeholders are "
                            "{subject} (the subject phrase), {id} (the identifier), {cls} (the class noun) "
                            "and {desc} (the description)")


def migrate_template(template: str) -> str:
    """The template in this grammar: an old one that wrote {id} for the subject phrase (no
    {subject}, no {cls}) gets {subject} in its place; any other comes back unchanged."""
    slots = template_slots(template)
    if "id" in slots and not slots & {"subject", "cls"}:
        return template.replace(LEGACY_PLACEHOLDER, PLACEHOLDER)
    return template


def migrate_templates(templates: Sequence[str]) -> list[str]:
    """`migrate_template` of each, with one FutureWarning when any changed."""
    migrated = [migrate_template(t) for t in templates]
    changed = [(old, new) for old, new in zip(templates, migrated) if old != new]
    if changed:
        old, new = changed[0]
        warnings.warn(f"{len(changed)} prompt template(s) mark the subject with {{id}}, as before the one grammar; "
                      f"read as {{subject}} ({old!r} -> {new!r}). Write {{subject}}: {{id}} is the identifier alone "
                      "and will be read so in a later release", FutureWarning, stacklevel=2)
    return migrated


def check_subject_template(template: str) -> None:
    """A prompt made with and without the identifier must say where the subject goes, with
    {subject} or {id} (then usually "{id} {cls}"); unknown placeholders are errors."""
    if not template_slots(template) & {"subject", "id"}:
        raise TemplateError(f"prompt template {template!r} has no {PLACEHOLDER} placeholder; write where the "
                            "subject goes, e.g. '{subject} riding a bicycle'")
    check_known_slots(template)


def fill(template: str, subject: Subject, with_identifier: bool = True) -> str:
    """A prompt made from a subject template ("{subject} riding a bicycle"), with the identifier
    ("sks plushie riding a bicycle") or without ("a plushie riding a bicycle"); an older
    template's lone {id} is read as {subject} (`migrate_templates`)."""
    template = migrate_templates([template])[0]
    check_subject_template(template)
    return fill_template(template, subject, with_identifier)


def with_identifier(template: str, subject: Subject, describe: bool = False) -> str:
    """"sks plushie riding a bicycle" (+ ", <description>" when `describe`)."""
    prompt = fill(template, subject, with_identifier=True)
    return f"{prompt}, {subject.description}" if describe and subject.description else prompt


def without_identifier(template: str, subject: Subject) -> str:
    """"a plushie riding a bicycle"."""
    return fill(template, subject, with_identifier=False)


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

    templates: tuple[str, ...]  # with {subject}; trained on
    subject: Subject
    heldout: tuple[str, ...] = ()  # with {subject}; only evaluated (always with the identifier)

    def __post_init__(self):
        if not self.templates:
            raise ValueError("RLPrompts needs at least one training template")
        migrated = migrate_templates((*self.templates, *self.heldout))  # one warning for both
        object.__setattr__(self, "templates", tuple(migrated[: len(self.templates)]))
        object.__setattr__(self, "heldout", tuple(migrated[len(self.templates):]))
        for template in (*self.templates, *self.heldout):
            check_subject_template(template)
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
