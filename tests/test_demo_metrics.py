"""The demo's headline metric, the method's class-noun reward, and generic toys, on hand-drawn images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instructbooth.demo.checker import read_image, score
from instructbooth.demo.evaluate import Evaluation
from instructbooth.demo.instructions import DemoReward, canonical_prompt, class_prompt, score_image
from instructbooth.demo.subject import draw_prompt
from instructbooth.demo.toys import TOY_PATTERNS, draw_toy_scene, sample_toy_batch, toy_caption
from instructbooth.demo.world import Scene

PROMPT = "two blue triangles on a gray background next to sks toy, with pink and cyan stripes"


def drawn(prompt: str, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(draw_prompt(canonical_prompt(prompt), np.random.default_rng(seed)))


def test_subject_conditional_alignment_counts_the_instruction_only_with_the_subject():
    both = drawn(PROMPT)  # subject and every attribute
    objects_only = drawn("two blue triangles on a gray background")  # 4/4 attributes, no subject
    subject_wrong_scene = drawn("sks toy next to one red circle on a gray background")  # subject, 1/4 (background)
    scores = [score_image(image, PROMPT) for image in (both, objects_only, subject_wrong_scene)]
    assert [s["alignment"] for s in scores] == [1.0, 1.0, 0.25]
    assert [s["subject"] for s in scores] == [1.0, 0.0, 1.0]
    assert [s["subject_alignment"] for s in scores] == [1.0, 0.0, 0.25]
    assert [s["subject_exact"] for s in scores] == [1.0, 0.0, 0.0]
    summary = Evaluation([PROMPT] * 3, torch.stack([both, objects_only, subject_wrong_scene]), scores).summary()
    assert summary["subject_alignment"] == pytest.approx(1.25 / 3, abs=1e-4)
    assert summary["alignment"] == pytest.approx(0.75)
    assert summary["subject_exact_count"] == 1 and summary["subject_count"] == 2 and summary["images"] == 3
    assert summary["alignment_se"] == pytest.approx(np.std([1, 1, 0.25], ddof=1) / np.sqrt(3), abs=1e-4)


def test_world_captions_have_no_subject_score():
    scores = score_image(drawn("two blue triangles on a gray background"), "two blue triangles on a gray background")
    assert scores["alignment"] == 1.0 and scores["subject"] == scores["subject_alignment"] == 0.0


def test_class_prompt_replaces_the_identifier_by_the_class_noun():
    assert class_prompt(PROMPT) == "a toy next to two blue triangles on a gray background"
    assert class_prompt("on a white background next to sks toy") == "a toy on a white background"
    assert class_prompt("one red circle on a black background") == "one red circle on a black background"


def test_the_methods_reward_is_the_class_noun_prompts_share_without_a_subject_term():
    both = drawn(PROMPT)
    objects_only = drawn("two blue triangles on a gray background")
    toy = torch.from_numpy(draw_toy_scene(Scene(2, "blue", "triangle", "gray"), "gray", np.random.default_rng(0)))
    images = torch.stack([both, objects_only, toy])
    plain = "two blue triangles on a gray background next to a toy"  # what RL scores (reward_plain_prompt)
    # ground truth with the subject: every attribute; without a toy: 4 of 5; any toy counts as "a toy"
    assert DemoReward()(images, [plain] * 3).tolist() == pytest.approx([1.0, 0.8, 1.0])
    assert [score_image(i, PROMPT)["reward"] for i in images] == pytest.approx([1.0, 0.8, 1.0])
    # the labelled variant scores the identifier prompt with a subject term worth half
    assert DemoReward(subject_weight=0.5)(images, [PROMPT] * 3).tolist() == pytest.approx([1.0, 0.5, 0.5])


def test_generic_toys_are_toys_but_never_the_subject():
    images, captions = sample_toy_batch(120, np.random.default_rng(0))
    for image, caption in zip(images, captions):
        assert all(score(image, canonical_prompt(caption)).values()), caption
        assert read_image(image).subject_fidelity == 0.0
    assert toy_caption(None, "gray") == "on a gray background next to a toy"
    assert len(TOY_PATTERNS) == 5 and "diagonal" not in TOY_PATTERNS


def test_pretraining_batches_mix_in_toys_at_the_configured_share():
    from instructbooth.demo.pretrain import PretrainConfig, training_batch

    images, captions = training_batch(PretrainConfig(batch_size=8, toy_share=0.25), np.random.default_rng(0))
    assert images.shape == (8, 3, 32, 32)
    assert [c.endswith("next to a toy") for c in captions] == [False] * 6 + [True] * 2
    _, plain = training_batch(PretrainConfig(batch_size=8), np.random.default_rng(0))
    assert not any("toy" in c for c in plain)
