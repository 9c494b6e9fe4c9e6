"""Prompts of the demo world, with or without the personalization subject, and their parser.

Grammar (lower case, single spaces):

    prompt   := [subject ("next to" objects | "") | objects] "on a" BACKGROUND "background"
    objects  := COUNT COLOUR SHAPE["s"]                      e.g. "two red circles"
    subject  := IDENTIFIER CLASS [DESCRIPTION] | "a" CLASS [DESCRIPTION]
                                                             e.g. "sks toy", "a toy"

World captions ("two red circles on a black background") are the objects-only form.
`PromptSpec` is what the checker scores; `format_prompt` and `parse_prompt` are inverses.
"""

from __future__ import annotations

from dataclasses import dataclass

from .world import BACKGROUNDS, COLOURS, COUNT_WORDS, SHAPES, Scene, background_phrase, scenes

IDENTIFIER = "sks"  # rare word bound to the subject by personalization
CLASS_NOUN = "toy"  # the subject's class
DESCRIPTION = "with pink and cyan stripes"  # the "detailed description" of the subject


@dataclass(frozen=True)
class PromptSpec:
    """The checkable content of a prompt.

    `subject` is "identifier" ("sks toy ..."), "class" ("a toy ...") or None (a world
    caption). `count` is 0 when the prompt names no shapes ("sks toy on a white background").
    """

    background: str  # one of BACKGROUNDS
    count: int = 0  # 0..3 world objects
    colour: str | None = None  # colour of the world objects (None when count is 0)
    shape: str | None = None  # shape of the world objects (None when count is 0)
    subject: str | None = None  # None, "identifier" or "class"
    detailed: bool = False  # the subject phrase carries DESCRIPTION

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        if self.count and (self.colour not in COLOURS or self.shape not in SHAPES):
            raise ValueError(f"objects need a colour in {COLOURS} and a shape in {SHAPES}")
        if not self.count and (self.colour or self.shape):
            raise ValueError("colour and shape must be None when count is 0")
        if self.subject not in (None, "identifier", "class"):
            raise ValueError(f"subject must be None, 'identifier' or 'class', not {self.subject!r}")
        if not self.count and self.subject is None:
            raise ValueError("a prompt needs world objects, the subject, or both")

    @property
    def scene(self) -> Scene | None:
        if not self.count:
            return None
        return Scene(self.count, self.colour, self.shape, self.background)

    @property
    def held_out(self) -> bool:
        return self.scene is not None and self.scene.held_out

    def attributes(self) -> tuple[str, ...]:
        """Names of the attributes the checker scores for this prompt, in a fixed order."""
        names = ("count", "colour", "shape", "background") if self.count else ("count", "background")
        return (("subject",) if self.subject else ()) + names


def subject_phrase(kind: str, detailed: bool = False) -> str:
    head = f"{IDENTIFIER} {CLASS_NOUN}" if kind == "identifier" else f"a {CLASS_NOUN}"
    return f"{head} {DESCRIPTION}" if detailed else head


def format_prompt(spec: PromptSpec) -> str:
    parts = []
    if spec.subject:
        parts.append(subject_phrase(spec.subject, spec.detailed))
    if spec.count:
        if spec.subject:
            parts.append("next to")
        parts.append(spec.scene.objects_phrase())
    parts.append(f"on {background_phrase(spec.background)}")
    return " ".join(parts)


def parse_prompt(prompt: str) -> PromptSpec:
    """The PromptSpec of a demo prompt; ValueError (naming the prompt) for anything else."""
    text = " ".join(prompt.strip().lower().split())
    try:
        return _parse(text)
    except (ValueError, IndexError) as error:
        raise ValueError(f"not a demo-world prompt: {prompt!r} ({error})") from None


def _parse(text: str) -> PromptSpec:
    head, sep, background_part = text.rpartition(" on a ")
    bg_words = background_part.split()
    if not sep or len(bg_words) != 2 or bg_words[1] != "background":
        raise ValueError("expected it to end with 'on a <colour> background'")
    subject, detailed, objects = None, False, head
    for kind in ("identifier", "class"):
        for with_description in (True, False):
            phrase = subject_phrase(kind, with_description)
            if head == phrase or head.startswith(phrase + " next to "):
                subject, detailed = kind, with_description
                objects = head[len(phrase) + len(" next to ") :] if head != phrase else ""
                break
        if subject:
            break
    if not objects:
        return PromptSpec(background=bg_words[0], subject=subject, detailed=detailed)
    count, colour, shape = _parse_objects(objects)
    return PromptSpec(bg_words[0], count, colour, shape, subject, detailed)


def _parse_objects(text: str) -> tuple[int, str, str]:
    words = text.split()
    if len(words) != 3 or words[0] not in COUNT_WORDS:
        raise ValueError(f"expected '<count> <colour> <shape>', got {text!r}")
    count = COUNT_WORDS.index(words[0]) + 1
    shape = words[2][:-1] if count > 1 and words[2].endswith("s") else words[2]
    if count > 1 and not words[2].endswith("s"):
        raise ValueError(f"plural shape expected after {words[0]!r}")
    return count, words[1], shape


def subject_prompts(split: str, subject: str = "identifier", detailed: bool = False) -> list[str]:
    """Prompts that place the subject in the world, for personalization and RL.

    split "train": the subject alone on each background (3) and next to every held-in
    scene (72); "heldout": next to every held-out scene (36). `subject` is "identifier"
    ("sks toy ...") or "class" ("a toy ...", the prompts without identifier).
    """
    specs = [PromptSpec(background=b, subject=subject, detailed=detailed) for b in BACKGROUNDS]
    if split == "heldout":
        specs = []
    elif split != "train":
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    for scene in scenes(split):
        specs.append(PromptSpec(scene.background, scene.count, scene.colour, scene.shape, subject, detailed))
    return [format_prompt(s) for s in specs]


def personalization_prompts(detailed: bool = False) -> list[str]:
    """The captions of the subject's reference images: "sks toy on a <bg> background"."""
    return [format_prompt(PromptSpec(background=b, subject="identifier", detailed=detailed)) for b in BACKGROUNDS]
