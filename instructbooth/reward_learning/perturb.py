"""Perturbed prompts for Lee et al.'s prompt-classification loss: the same words, other meaning.

Each prompt gets up to N-1 alternatives that differ from it in one attribute:
- a count word swapped for another ("two dogs" -> "three dogs");
- a colour word swapped ("a red car" -> "a blue car");
- the word before "background" swapped ("on a black background" -> "on a white background");
- the taxonomy's one-attribute edits: a prompt a taxonomy template made ("sks plushie holding
  a red umbrella") with one attribute set to another of its values.
Words are matched whole and case-insensitively; a prompt with nothing to swap gets fewer (or
no) alternatives, and the loss masks the missing ones. The choice is seeded and deterministic.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from ..preference.taxonomy import SLOT, SUBJECT_SLOT, Taxonomy

COUNT_WORDS = ("one", "two", "three", "four", "five", "six")
COLOUR_WORDS = ("red", "green", "blue", "yellow", "black", "white", "gray", "orange", "purple", "pink", "brown")
BACKGROUND_WORDS = ("white", "black", "gray", "blue", "green", "red", "yellow")
_BACKGROUND = re.compile(r"\b(\w+)(\s+background)\b", re.IGNORECASE)


def word_swaps(prompt: str) -> list[str]:
    """Every one-word swap of a count, colour or background word (in that order, no repeats)."""
    found: list[str] = []
    found += _swap_words(prompt, COUNT_WORDS)
    found += _swap_words(_mask_backgrounds(prompt), COLOUR_WORDS, original=prompt)
    for match in _BACKGROUND.finditer(prompt):
        if match.group(1).lower() in BACKGROUND_WORDS:
            for other in BACKGROUND_WORDS:
                if other != match.group(1).lower():
                    found.append(prompt[: match.start(1)] + other + prompt[match.end(1):])
    return _distinct(found, prompt)


def taxonomy_edits(prompt: str, taxonomy: Taxonomy | None) -> list[str]:
    """One-attribute edits of `prompt` when a taxonomy template made it (any subject phrase)."""
    if taxonomy is None:
        return []
    edits: list[str] = []
    for topic in taxonomy.subtopics:
        values = dict(topic.attributes)
        pattern = _template_pattern(topic.template, values)
        match = pattern.fullmatch(prompt.strip())
        if not match:
            continue
        for attribute, choices in topic.attributes:
            chosen = match.group(attribute)
            for other in choices:
                if other != chosen:
                    start, end = match.span(attribute)
                    edits.append(prompt.strip()[:start] + other + prompt.strip()[end:])
    return _distinct(edits, prompt)


def perturbed_prompts(prompt: str, count: int, seed: int = 0, taxonomy: Taxonomy | None = None) -> list[str]:
    """Up to `count` distinct alternatives to `prompt` (fewer when fewer exist), seeded."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    pool = _distinct(word_swaps(prompt) + taxonomy_edits(prompt, taxonomy), prompt)
    if len(pool) <= count:
        return pool
    return random.Random(f"{seed}:{prompt}").sample(pool, count)


def candidate_prompts(prompts: Sequence[str], num_prompts: int, seed: int = 0,
                      taxonomy: Taxonomy | None = None) -> list[list[str]]:
    """Per prompt its N candidates: the prompt itself first, then up to N-1 perturbations."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts (N) must be at least 1 (the true prompt), got {num_prompts}")
    return [[p, *perturbed_prompts(p, num_prompts - 1, seed, taxonomy)] for p in prompts]


def _swap_words(prompt: str, words: Sequence[str], original: str | None = None) -> list[str]:
    """Swaps found in `prompt`, applied to `original` (same length, so spans agree)."""
    base = original if original is not None else prompt
    found = []
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    for match in pattern.finditer(prompt):
        for other in words:
            if other != match.group(1).lower():
                replacement = other.capitalize() if match.group(1)[0].isupper() else other
                found.append(base[: match.start()] + replacement + base[match.end():])
    return found


def _mask_backgrounds(prompt: str) -> str:
    """The background colour words blanked out (same length), so colour swaps skip them."""
    return _BACKGROUND.sub(lambda m: "_" * len(m.group(1)) + m.group(2), prompt)


def _template_pattern(template: str, values: dict[str, tuple[str, ...]]) -> re.Pattern:
    parts, last, named = [], 0, set()
    for match in SLOT.finditer(template):
        parts.append(re.escape(template[last: match.start()]))
        name = match.group(1)
        if name == SUBJECT_SLOT:
            parts.append(r".+?")
        elif name in named:  # a slot used twice holds the same value twice
            parts.append(f"(?P={name})")
        else:
            named.add(name)
            options = sorted(values[name], key=len, reverse=True)
            parts.append(f"(?P<{name}>" + "|".join(re.escape(v) for v in options) + ")")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts), re.IGNORECASE)


def _distinct(prompts: list[str], original: str) -> list[str]:
    seen = {original.strip().lower()}
    result = []
    for prompt in prompts:
        key = prompt.strip().lower()
        if key not in seen:
            seen.add(key)
            result.append(prompt)
    return result
