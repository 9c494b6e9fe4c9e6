"""A prompt taxonomy (themes x subtopics x attributes) and the analogous prompt pairs it yields.

The file format (JSON, or YAML with the same structure) nests themes, their subtopics,
and per subtopic one template plus the values of each attribute the template names:

    {"name": "my-taxonomy",
     "default_subject": "a plushie",
     "themes": {
       "interaction": {
         "holding": {"template": "{subject} holding a {colour} {object}",
                     "attributes": {"colour": ["red", "blue"], "object": ["umbrella", "balloon"]}}}}}

`{subject}` stands for the subject ("sks plushie" with the identifier, "a plushie" without,
or `default_subject` when there is no personalized subject; older files wrote `{id}`, still read
so with a FutureWarning); every other `{name}` is an
attribute. A prompt fills each attribute with one of its values; two prompts of one
subtopic that differ in exactly one attribute are *analogous* (InstructEngine's
cross-validation pairs compare their images). The shipped `taxonomy.json` beside this
module is the default; copy and edit it to make your own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from itertools import combinations, product
from pathlib import Path
from typing import Any, Mapping

import torch

from ..prompts import migrate_templates

SUBJECT_SLOT = "subject"  # the subject phrase, as in every prompt template (prompts.py)
SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_TAXONOMY = "taxonomy.json"  # shipped beside this module


class TaxonomyError(ValueError):
    """A taxonomy file or dict that cannot be used; the message names the place."""


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of the taxonomy before the subject is filled in."""

    theme: str
    subtopic: str
    template: str  # with {subject} and attribute slots
    values: tuple[tuple[str, str], ...]  # (attribute, value) in the subtopic's attribute order

    def text(self, subject_phrase: str) -> str:
        """The prompt with `{subject}` -> `subject_phrase` and every attribute filled."""
        filled = dict(self.values)
        filled[SUBJECT_SLOT] = subject_phrase
        return SLOT.sub(lambda m: filled[m.group(1)], self.template)

    def value(self, attribute: str) -> str:
        return dict(self.values)[attribute]


@dataclass(frozen=True)
class PromptPair:
    """Two analogous prompts: the same subtopic, different in exactly `attribute`."""

    first: PromptSpec
    second: PromptSpec
    attribute: str

    @property
    def theme(self) -> str:
        return self.first.theme

    @property
    def subtopic(self) -> str:
        return self.first.subtopic


@dataclass(frozen=True)
class Subtopic:
    theme: str
    name: str
    template: str
    attributes: tuple[tuple[str, tuple[str, ...]], ...]  # (attribute, values) in file order

    def prompts(self) -> list[PromptSpec]:
        """Every combination of attribute values (the last attribute varies fastest)."""
        names = [name for name, _ in self.attributes]
        combos = product(*(values for _, values in self.attributes))
        return [PromptSpec(self.theme, self.name, self.template, tuple(zip(names, combo))) for combo in combos]

    def pairs(self) -> list[PromptPair]:
        """Every unordered pair of prompts differing in exactly one attribute."""
        found = []
        for position, (attribute, values) in enumerate(self.attributes):
            others = [v for i, (_, v) in enumerate(self.attributes) if i != position]
            for rest in product(*others):
                for a, b in combinations(values, 2):
                    found.append(PromptPair(self._spec(position, a, rest), self._spec(position, b, rest), attribute))
        return found

    def _spec(self, position: int, value: str, rest: tuple[str, ...]) -> PromptSpec:
        chosen = list(rest)
        chosen.insert(position, value)
        return PromptSpec(self.theme, self.name, self.template,
                          tuple((name, v) for (name, _), v in zip(self.attributes, chosen)))


@dataclass(frozen=True)
class Taxonomy:
    name: str
    default_subject: str  # fills {subject} when there is no personalized subject
    subtopics: tuple[Subtopic, ...]

    # --- reading and writing

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "taxonomy") -> "Taxonomy":
        if not isinstance(data, Mapping) or not isinstance(data.get("themes"), Mapping) or not data["themes"]:
            raise TaxonomyError(f"{source}: needs a non-empty 'themes' object: "
                                '{"themes": {"<theme>": {"<subtopic>": {"template": ..., "attributes": {...}}}}}')
        subtopics = []
        for theme, topics in data["themes"].items():
            if not isinstance(topics, Mapping) or not topics:
                raise TaxonomyError(f"{source}: theme {theme!r} needs a non-empty object of subtopics")
            for name, body in topics.items():
                subtopics.append(_subtopic(str(theme), str(name), body, source))
        taxonomy = cls(str(data.get("name", "")), str(data.get("default_subject", "a plushie")), tuple(subtopics))
        if not taxonomy.analogous_pairs():
            raise TaxonomyError(f"{source}: no attribute has two values, so no analogous prompt pairs exist")
        return taxonomy

    @classmethod
    def load(cls, path: str | Path) -> "Taxonomy":
        """A taxonomy file: .json, or .yaml / .yml (needs PyYAML)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"taxonomy file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise TaxonomyError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write JSON") from None
            data = yaml.safe_load(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise TaxonomyError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def default(cls) -> "Taxonomy":
        """The shipped taxonomy (instructbooth/preference/taxonomy.json)."""
        resource = resources.files(__package__) / DEFAULT_TAXONOMY
        return cls.from_dict(json.loads(resource.read_text(encoding="utf-8")), source=DEFAULT_TAXONOMY)

    def to_dict(self) -> dict[str, Any]:
        themes: dict[str, dict] = {}
        for topic in self.subtopics:
            themes.setdefault(topic.theme, {})[topic.name] = {
                "template": topic.template, "attributes": {k: list(v) for k, v in topic.attributes}}
        return {"name": self.name, "default_subject": self.default_subject, "themes": themes}

    # --- prompts and pairs

    @property
    def themes(self) -> list[str]:
        return list(dict.fromkeys(t.theme for t in self.subtopics))

    def prompts(self) -> list[PromptSpec]:
        return [spec for topic in self.subtopics for spec in topic.prompts()]

    def analogous_pairs(self) -> list[PromptPair]:
        """Every analogous pair of the taxonomy, subtopic by subtopic."""
        return [pair for topic in self.subtopics for pair in topic.pairs()]

    def sample_pairs(self, count: int, seed: int = 0) -> list[PromptPair]:
        """`count` distinct analogous pairs (all of them if fewer exist), balanced over
        subtopics: each subtopic's pairs are shuffled, then subtopics take turns in a
        shuffled order. The same (taxonomy, count, seed) always gives the same list."""
        if count < 1:
            raise ValueError(f"count must be >= 1 prompt pair, got {count}")
        generator = torch.Generator().manual_seed(seed)
        queues = []
        for topic in self.subtopics:
            pairs = topic.pairs()
            order = torch.randperm(len(pairs), generator=generator).tolist()
            queues.append([pairs[i] for i in order])
        turn = [queues[i] for i in torch.randperm(len(queues), generator=generator).tolist()]
        chosen: list[PromptPair] = []
        while len(chosen) < count and any(turn):
            for queue in turn:
                if queue and len(chosen) < count:
                    chosen.append(queue.pop(0))
        return chosen


def _subtopic(theme: str, name: str, body: Any, source: str) -> Subtopic:
    where = f"{source}: {theme}/{name}"
    if not isinstance(body, Mapping) or not isinstance(body.get("template"), str):
        raise TaxonomyError(f"{where} needs a 'template' string and an 'attributes' object")
    template, attributes = body["template"], body.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise TaxonomyError(f"{where}: 'attributes' must map attribute names to lists of values")
    if "id" not in attributes:
        template = migrate_templates([template])[0]  # an older taxonomy's {id} is the subject phrase
    slots = [s for s in dict.fromkeys(SLOT.findall(template)) if s != SUBJECT_SLOT]
    missing = [s for s in slots if s not in attributes]
    unused = [a for a in attributes if a not in slots]
    if missing or unused:
        raise TaxonomyError(f"{where}: template {template!r} and attributes disagree: "
                            f"slots without values {missing}, attributes not in the template {unused}")
    checked = []
    for attribute in slots:  # template order
        values = attributes[attribute]
        if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
            raise TaxonomyError(f"{where}: attribute {attribute!r} needs a non-empty list of values")
        values = tuple(str(v) for v in values)
        if len(set(values)) != len(values):
            raise TaxonomyError(f"{where}: attribute {attribute!r} lists a value twice: {list(values)}")
        checked.append((attribute, values))
    return Subtopic(theme, name, template, tuple(checked))
