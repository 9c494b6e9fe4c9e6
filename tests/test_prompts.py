"""Prompt templating, shipped prompt sets and the identifier / plain mix."""

from __future__ import annotations

import warnings

import pytest
import torch

from instructbooth.prompts import (
    HELDOUT,
    IDENTIFIER,
    PLAIN,
    RLPrompts,
    Subject,
    load_prompt_set,
    parse_prompt_lines,
    read_prompt_file,
    shipped_prompt_sets,
    migrate_template,
    with_identifier,
    without_identifier,
)

PLUSHIE = Subject("sks", "plushie", "a green round plushie with a red nose")


def test_templating_with_and_without_identifier():
    assert with_identifier("{subject} riding a bicycle", PLUSHIE) == "sks plushie riding a bicycle"
    assert without_identifier("{subject} riding a bicycle", PLUSHIE) == "a plushie riding a bicycle"
    assert without_identifier("a photo of {subject}", Subject("zwx", "owl")) == "a photo of an owl"
    described = with_identifier("{subject} riding a bicycle", PLUSHIE, describe=True)
    assert described == "sks plushie riding a bicycle, a green round plushie with a red nose"
    assert with_identifier("{subject} and {subject}", PLUSHIE) == "sks plushie and sks plushie"
    with pytest.raises(ValueError, match="unknown placeholders {braces}, {place}; the placeholders are {subject}"):
        with_identifier("{subject} in {braces} at {place}", PLUSHIE)  # would reach the model as literal text


def test_one_grammar_for_every_stage():
    """{id} is the identifier everywhere: left out (with its space) without the identifier."""
    from instructbooth.subject_data import fill_prompt

    assert with_identifier("a {id} {cls} in the snow", PLUSHIE) == "a sks plushie in the snow"
    assert without_identifier("a {id} {cls} in the snow", PLUSHIE) == "a plushie in the snow"
    assert with_identifier("{subject}{desc} at sea", Subject("sks", "boat", "red")) == "sks boat red at sea"
    # personalization fills the same placeholders the same way
    assert fill_prompt("a photo of {subject}{desc}", "sks", "plushie", "red") == "a photo of sks plushie red"
    assert fill_prompt("a photo of {id} {cls}", "sks", "plushie") == with_identifier("a photo of {id} {cls}", PLUSHIE)
    # the shipped DreamBooth lists read as the paper writes them, and are scored without the identifier
    objects = load_prompt_set("dreambooth_objects")
    assert with_identifier(objects[0], Subject("sks", "dog")) == "a sks dog in the jungle"
    assert without_identifier(objects[0], Subject("sks", "dog")) == "a dog in the jungle"


def test_older_templates_with_a_lone_id_still_mean_the_subject_phrase():
    with pytest.warns(FutureWarning, match=r"read as \{subject\}.*'\{id\} swimming' -> '\{subject\} swimming'"):
        prompts = RLPrompts(("{id} swimming", "{subject} diving"), PLUSHIE, ("{id} baking",))
    assert prompts.templates == ("{subject} swimming", "{subject} diving") and prompts.heldout == ("{subject} baking",)
    with pytest.warns(FutureWarning):
        assert without_identifier("a photo of {id}", Subject("zwx", "owl")) == "a photo of an owl"
    assert migrate_template("a {id} {cls}") == "a {id} {cls}"  # {cls} beside it: already the new grammar
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RLPrompts.default(PLUSHIE)  # the shipped sets are in the new grammar


def test_template_without_placeholder_is_refused_clearly():
    with pytest.raises(ValueError, match=r"no \{subject\} placeholder"):
        with_identifier("a dog riding a bicycle", PLUSHIE)
    with pytest.raises(ValueError, match="placeholder"):
        RLPrompts(("{subject} swimming", "a cat"), PLUSHIE)
    with pytest.raises(ValueError, match="identifier and class noun"):
        Subject("", "plushie")


def test_shipped_sets_load_and_are_disjoint():
    assert {"actions", "interactions", "heldout"} <= set(shipped_prompt_sets())
    actions, interactions, heldout = (load_prompt_set(n) for n in ("actions", "interactions", "heldout"))
    assert len(actions) >= 20 and len(interactions) >= 12 and len(heldout) >= 8
    assert all("{subject}" in t for t in actions + interactions + heldout)
    assert not set(heldout) & (set(actions) | set(interactions))
    prompts = RLPrompts.default(PLUSHIE)
    assert len(prompts.templates) == len(actions) + len(interactions)
    with pytest.raises(ValueError, match="no shipped prompt set 'nope'"):
        load_prompt_set("nope")


def test_user_prompt_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n{subject} on a boat\n\n  {subject} eating ramen  # tasty\n", encoding="utf-8")
    assert read_prompt_file(path) == ["{subject} on a boat", "{subject} eating ramen"]
    assert load_prompt_set(str(path)) == ["{subject} on a boat", "{subject} eating ramen"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="has no prompts"):
        read_prompt_file(tmp_path / "empty.txt")
    assert parse_prompt_lines("a\n#b\n c ") == ["a", "c"]


def test_draw_mixes_identifier_prompts_at_the_exact_ratio():
    prompts = RLPrompts(("{subject} swimming", "{subject} reading a book", "{subject} surfing"), PLUSHIE, ("{subject} baking",))
    drawn = prompts.draw(8, 0.25, torch.Generator().manual_seed(0))
    groups = [d.group for d in drawn]
    assert groups.count(IDENTIFIER) == 2 and groups.count(PLAIN) == 6
    for d in drawn:
        template = prompts.templates[d.template]
        assert d.reward_text == without_identifier(template, PLUSHIE)
        expected = with_identifier(template, PLUSHIE) if d.group == IDENTIFIER else d.reward_text
        assert d.text == expected
    again = prompts.draw(8, 0.25, torch.Generator().manual_seed(0))
    assert again == drawn
    assert all(d.group == IDENTIFIER for d in prompts.draw(5, 1.0, torch.Generator()))
    described = prompts.draw(4, 1.0, torch.Generator(), describe=True, reward_plain=False)
    assert all(d.text.endswith(PLUSHIE.description) and d.reward_text == d.text for d in described)
    with pytest.raises(ValueError, match="identifier_ratio"):
        prompts.draw(2, 1.5, torch.Generator())


def test_heldout_prompts_use_the_identifier():
    prompts = RLPrompts(("{subject} swimming",), PLUSHIE, ("{subject} baking", "{subject} on the moon"))
    held = prompts.heldout_prompts()
    assert [d.text for d in held] == ["sks plushie baking", "sks plushie on the moon"]
    assert [d.reward_text for d in held] == ["a plushie baking", "a plushie on the moon"]
    assert {d.group for d in held} == {HELDOUT}
    with pytest.raises(ValueError, match="held-out templates also in the training set"):
        RLPrompts(("{subject} swimming",), PLUSHIE, ("{subject} swimming",))
