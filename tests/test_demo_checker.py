"""The exact alignment checker of the demo world, its reward and the subject fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instructbooth.demo import checker, prompts, subject, world
from instructbooth.demo.checker import AlignmentReward, attribute_accuracy, score, subject_fidelity

NOISE = 0.1  # std of added Gaussian noise (images in [0, 1]) the checker must shrug off


def noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def ground_truth():
    """500 world images (all 108 captions) and their captions."""
    images, captions = world.sample_batch(500, np.random.default_rng(11), split="all")
    return torch.from_numpy(images), captions


@pytest.mark.parametrize("sigma", [0.0, NOISE])
def test_every_attribute_of_500_ground_truth_images(ground_truth, sigma):
    images, captions = ground_truth
    images = torch.from_numpy(noisy(images.numpy(), sigma)) if sigma else images
    accuracy = attribute_accuracy(images, captions)
    assert accuracy == {"count": 1.0, "colour": 1.0, "shape": 1.0, "background": 1.0, "all": 1.0, "reward": 1.0}


def test_subject_prompts_on_ground_truth():
    rng = np.random.default_rng(5)
    texts = prompts.subject_prompts("train") + prompts.subject_prompts("heldout", subject="class", detailed=True)
    images = np.stack([subject.draw_prompt(t, rng) for t in texts])
    for batch in (images, noisy(images, NOISE)):
        rewards = AlignmentReward()(torch.from_numpy(batch), texts, [{} for _ in texts])
        assert rewards.tolist() == [1.0] * len(texts)


def test_mismatched_prompts_score_low(ground_truth):
    images, captions = ground_truth
    rng = np.random.default_rng(0)
    others = [world.all_scenes()[i].caption() for i in rng.integers(0, 108, size=len(captions))]
    mismatched = [o if o != c else world.captions("all")[0 if c != world.captions("all")[0] else 1]
                  for o, c in zip(others, captions)]
    rewards = AlignmentReward()(images, mismatched)
    assert rewards.max() < 1.0
    assert rewards.mean() < 0.45  # chance level of a random caption is about 0.3


@pytest.mark.parametrize("field,other", [("count", 3), ("colour", "green"), ("shape", "square"),
                                         ("background", "gray")])
def test_each_attribute_is_read(field, other):
    scene = world.Scene(2, "red", "triangle", "black")
    image = world.draw_scene(scene, np.random.default_rng(0))
    changed = world.Scene(**{**scene.__dict__, field: other})
    result = score(image, changed.caption())
    assert result == {name: name != field for name in ("count", "colour", "shape", "background")}


def test_reading_objects():
    image = world.draw_scene(world.Scene(3, "blue", "circle", "white"), np.random.default_rng(2))
    reading = checker.read_image(image)
    assert reading.background == "white" and reading.subject_fidelity == 0.0
    assert [(o.colour, o.shape) for o in reading.objects] == [("blue", "circle")] * 3


def test_reward_protocol():
    images, captions = world.sample_batch(4, np.random.default_rng(0))
    reward = AlignmentReward()
    scores = reward(torch.from_numpy(images), captions, [{}] * 4)
    assert scores.dtype == torch.float32 and scores.shape == (4,) and scores.tolist() == [1.0] * 4
    blank = torch.zeros(2, 3, 32, 32)  # black, no objects: only the background can hold
    assert reward(blank, ["one red circle on a black background", "one red circle on a white background"]).tolist() \
        == [0.25, 0.0]
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.zeros(3, 32, 32), ["x"])
    with pytest.raises(ValueError, match="prompts"):
        reward(blank, ["one red circle on a black background"])
    with pytest.raises(ValueError, match="not a demo-world prompt"):
        reward(blank, ["a photo of a dog", "a cat"])


def test_subject_attribute():
    rng = np.random.default_rng(3)
    with_subject = subject.draw_prompt("sks toy next to one green square on a gray background", rng)
    without = world.draw_scene(world.Scene(1, "green", "square", "gray"), rng)
    text = "sks toy next to one green square on a gray background"
    assert score(with_subject, text) == dict(subject=True, count=True, colour=True, shape=True, background=True)
    assert score(without, text)["subject"] is False
    assert score(with_subject, "a toy on a gray background") == dict(subject=True, count=False, background=True)


def _diamond_with(pattern: str, size: int = 13) -> np.ndarray:
    image = world.blank("white")
    ys, xs = np.mgrid[0:size, 0:size]
    if pattern == "solid":
        colours = np.broadcast_to(world.rgb("pink")[:, None, None], (3, size, size))
    else:  # vertical stripes: wrong orientation
        stripe = (xs // 3) % 2
        colours = np.where(stripe[None] == 0, world.rgb("pink")[:, None, None], world.rgb("cyan")[:, None, None])
    world.paint(image, subject.subject_mask(size), (9, 9), colours.astype(np.float32))
    return image


def test_subject_fidelity_separates_the_subject():
    subject_images, _ = subject.reference_images(count=12, seed=4)
    world_images, _ = world.sample_batch(50, np.random.default_rng(4), split="all")
    on_subject = [subject_fidelity(im) for im in subject_images]
    on_subject_noisy = [subject_fidelity(im) for im in noisy(subject_images, NOISE)]
    elsewhere = [subject_fidelity(im) for im in world_images]
    assert min(on_subject) == 1.0 and min(on_subject_noisy) > 0.9
    assert max(elsewhere) == 0.0
    assert subject_fidelity(_diamond_with("solid")) == 0.0
    assert subject_fidelity(_diamond_with("vertical")) < 0.3
    colour_noise = np.random.default_rng(0).choice([0.0, 1.0], size=(3, 32, 32)).astype(np.float32)
    assert subject_fidelity(colour_noise) < 0.3


def test_subject_needs_stripes_three_pixels_wide():
    for width, expected in ((3, 1.0), (1, 0.0), (2, 0.0)):
        look = subject.SubjectLook(stripe_width=width)
        image = subject.draw_prompt("sks toy on a white background", np.random.default_rng(1), look=look)
        assert subject_fidelity(image) == pytest.approx(expected, abs=0.05), width


def test_speckled_background_is_mixed():
    scene = world.Scene(1, "red", "circle", "white")
    image = world.draw_scene(scene, np.random.default_rng(0))
    assert score(image, scene.caption())["background"]
    speckled = image.copy()
    speckled[:, ::3, ::3] = world.rgb("black")[:, None, None]  # 1 pixel in 9: a texture, not objects
    reading = checker.read_image(speckled)
    assert reading.background == checker.MIXED and len(reading.objects) == 1
    assert score(speckled, scene.caption()) == dict(count=True, colour=True, shape=True, background=False)


def test_object_of_interleaved_colours_has_no_colour():
    image = world.blank("gray")
    stripes = np.where(np.arange(10)[None, None, :] % 2 == 0, world.rgb("red")[:, None, None],
                       world.rgb("blue")[:, None, None]) * np.ones((3, 10, 10))
    world.paint(image, np.ones((10, 10), dtype=bool), (10, 10), stripes.astype(np.float32))
    reading = checker.read_image(image)
    assert [o.colour for o in reading.objects] == [checker.MIXED]
    result = score(image, "one red square on a gray background")
    assert result["count"] and result["background"] and not result["colour"]
