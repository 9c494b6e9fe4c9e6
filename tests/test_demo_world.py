"""The embedded demo world: captions, splits, drawing, the subject and its prompts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from instructbooth.demo import prompts, subject, world

CAPTION = re.compile(
    r"^(one (red|green|blue|yellow) (circle|square|triangle)"
    r"|(two|three) (red|green|blue|yellow) (circles|squares|triangles))"
    r" on a (white|black|gray) background$"
)


def test_captions_and_splits():
    train, heldout, everything = (world.captions(s) for s in ("train", "heldout", "all"))
    assert (len(train), len(heldout), len(everything)) == (72, 36, 108)
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert all(CAPTION.match(c) for c in everything)
    assert "two blue triangles on a black background" in heldout
    assert not any("blue triangle" in c for c in train)
    with pytest.raises(ValueError, match="unknown split"):
        world.scenes("test")


def test_every_attribute_value_is_seen_in_training():
    scenes = world.scenes("train")
    for field, values in [("count", (1, 2, 3)), ("colour", world.COLOURS), ("shape", world.SHAPES),
                          ("background", world.BACKGROUNDS)]:
        assert {getattr(s, field) for s in scenes} == set(values)


def test_parse_caption_round_trip_and_errors():
    for scene in world.all_scenes():
        assert world.parse_caption(scene.caption()) == scene
    for bad in ["two red circle on a black background", "four red circles on a black background",
                "one red circles on a white background", "two red circles"]:
        with pytest.raises(ValueError):
            world.parse_caption(bad)


def test_drawing_is_deterministic_and_uses_only_the_scene_colours():
    a, captions_a = world.render_dataset("all", 2, seed=7)
    b, captions_b = world.render_dataset("all", 2, seed=7)
    c, _ = world.render_dataset("all", 2, seed=8)
    assert captions_a == captions_b and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (216, 3, 32, 32) and a.dtype == np.float32
    for image, caption in zip(a, captions_a):
        scene = world.parse_caption(caption)
        colours = {tuple(p) for p in np.round(image.reshape(3, -1).T * 255).astype(int)}
        assert colours == {world.PALETTE[scene.background], world.PALETTE[scene.colour]}


def test_objects_keep_apart():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = list(rng.integers(8, 12, size=3))
        corners = world.place_boxes(sizes, rng)
        boxes = [(y, x, s) for (y, x), s in zip(corners, sizes)]
        for i, first in enumerate(boxes):
            assert all(0 < v and v + first[2] < 32 for v in first[:2])
            for second in boxes[i + 1 :]:
                assert world._apart(first, second, gap=1)


def test_sample_batch_is_fast_and_seeded():
    images, captions = world.sample_batch(64, np.random.default_rng(3))
    again, captions_again = world.sample_batch(64, np.random.default_rng(3))
    assert images.shape == (64, 3, 32, 32) and np.array_equal(images, again) and captions == captions_again
    assert set(captions) <= set(world.captions("train"))


def test_subject_prompts():
    train = prompts.subject_prompts("train")
    heldout = prompts.subject_prompts("heldout")
    assert len(train) == 75 and len(heldout) == 36 and not set(train) & set(heldout)
    assert "sks toy on a white background" in train
    assert "sks toy next to two red circles on a black background" in train
    assert all(prompts.parse_prompt(p).held_out for p in heldout)
    assert prompts.subject_prompts("train", subject="class")[0] == "a toy on a white background"
    detailed = prompts.subject_prompts("heldout", detailed=True)[0]
    assert detailed == "sks toy with pink and cyan stripes next to one red square on a white background"
    assert prompts.personalization_prompts() == [f"sks toy on a {b} background" for b in world.BACKGROUNDS]


def test_prompt_parser_round_trip_and_errors():
    everything = world.captions("all") + prompts.subject_prompts("train") + prompts.subject_prompts(
        "heldout", subject="class", detailed=True)
    for text in everything:
        assert prompts.format_prompt(prompts.parse_prompt(text)) == text
    spec = prompts.parse_prompt("  SKS toy next to three Yellow triangles on a gray background ")
    assert spec == prompts.PromptSpec("gray", 3, "yellow", "triangle", "identifier")
    assert spec.attributes() == ("subject", "count", "colour", "shape", "background")
    for bad in ["a dog on a white background", "sks toy next to on a white background", "red circles", ""]:
        with pytest.raises(ValueError, match="not a demo-world prompt"):
            prompts.parse_prompt(bad)


def test_subject_images():
    images, captions = subject.reference_images(count=6, seed=0)
    again, _ = subject.reference_images(count=6, seed=0)
    assert images.shape == (6, 3, 32, 32) and np.array_equal(images, again)
    assert captions[:3] == prompts.personalization_prompts()
    for image, caption in zip(images, captions):
        colours = {tuple(p) for p in np.round(image.reshape(3, -1).T * 255).astype(int)}
        background = prompts.parse_prompt(caption).background
        assert colours == {world.PALETTE[background], world.PALETTE["pink"], world.PALETTE["cyan"]}
    scene = subject.draw_prompt("sks toy next to two red circles on a black background", np.random.default_rng(1))
    assert (np.round(scene * 255).astype(int) == np.array(world.PALETTE["red"])[:, None, None]).all(0).sum() > 50
