"""The RL recipe: configurations that cannot learn are refused, advantages say when they fell
back from per-prompt statistics, gradient accumulation equals one big batch, and the
identifier ratio holds per epoch however few prompts an epoch draws."""

from __future__ import annotations

import pytest
import torch

from instructbooth.components import tiny_components
from instructbooth.lora import LoraConfig, inject_lora, lora_state_dict
from instructbooth.prompts import IDENTIFIER, PLAIN, RLPrompts, Subject
from instructbooth.rl import trainer
from instructbooth.rl.advantages import PerPromptStatTracker, group_advantages
from instructbooth.rl.config import RLConfig
from instructbooth.rl.trainer import train_rl

PROMPTS = RLPrompts(("{subject} riding a bicycle", "{subject} swimming", "{subject} reading"), Subject("sks", "plushie"),
                    ("{subject} baking",))
TINY = dict(sample_steps=4, guidance=2.0, height=16, width=16, learning_rate=3e-2, clip_range=1e-2, heldout_every=0,
            epochs=1)


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))


def personalized_lora() -> dict:
    """A stand-in personalized LoRA (random rank-2 weights on the tiny UNet's attention)."""
    parts = tiny_components(0)
    params = inject_lora(parts, LoraConfig(rank=2, alpha=2.0), seed=5)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return lora_state_dict(parts)


@pytest.mark.parametrize("settings, message", [
    (dict(advantage="group", images_per_prompt=1), "with images_per_prompt=1 every advantage is 0"),
    (dict(advantage="tracker", tracker_min_count=40, tracker_buffer=32), "no prompt could ever use its own"),
    (dict(advantage="batch", sample_batch_size=1, sample_batches=1, images_per_prompt=1, train_batch_size=1,
          gradient_accumulation_steps=1), "with 1 sample per epoch every advantage is 0"),
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(adv_clip=0.0), "a clip at 0 sets every advantage to 0"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be >= 1"),
    (dict(train_batch_size=4, gradient_accumulation_steps=3), r"4 x 3 = 12 samples per update\) must divide"),
    (dict(method="rwr", rwr_weighting="softmax"), "rwr_weighting must be one of"),
])
def test_configurations_that_cannot_learn_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RLConfig(**settings)


def test_default_recipe_is_consistent():
    config = RLConfig()
    assert config.advantage == "group" and config.images_per_prompt >= 2
    assert config.samples_per_epoch == 16 and config.samples_per_update == 8 and config.updates_per_epoch == 2
    assert config.identifier_ratio == 0.25 and config.window_steps == 48  # the last 2 of 50 steps left out
    assert RLConfig(method="rwr", images_per_prompt=1)  # group advantages do not concern RWR


def test_group_advantages_flag_singletons_and_tracker_falls_back_per_split():
    rewards = torch.tensor([1.0, 3.0, 5.0, 2.0])
    grouped = group_advantages(rewards, ["a", "a", "b", "c"])
    torch.testing.assert_close(grouped.values, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert grouped.fallback.tolist() == [False, False, True, True] and grouped.fallback_share == 0.5

    tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    splits = [IDENTIFIER, IDENTIFIER, PLAIN, PLAIN]
    first = tracker.advantages(["a", "b", "c", "d"], torch.tensor([1.0, 3.0, 10.0, 20.0]), splits)
    # no prompt has 2 rewards yet: identifier rows use mean 2 / std 1, plain rows mean 15 / std 5
    torch.testing.assert_close(first.values, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert first.fallback_share == 1.0
    second = tracker.advantages(["a", "b"], torch.tensor([3.0, 3.0]), [IDENTIFIER, IDENTIFIER])
    # "a" now has [1, 3] (its own stats: mean 2, std 1); "b" has [3, 3] (std 0)
    assert second.values[0].item() == pytest.approx(1.0, abs=1e-5) and second.fallback_share == 0.0
    lone = tracker.advantages(["e", "f"], torch.tensor([4.0, 8.0]), [IDENTIFIER, PLAIN])
    # each split has one sample in the batch: the whole batch (mean 6, std 2) stands in
    torch.testing.assert_close(lone.values, torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)


def test_epoch_metrics_log_the_fallback_share():
    tracked = train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(
        **TINY, sample_batch_size=4, sample_batches=1, images_per_prompt=1, advantage="tracker", tracker_min_count=4,
        train_batch_size=4, gradient_accumulation_steps=1))
    assert tracked.metrics[0]["advantage_fallback_share"] == 1.0  # 4 samples: no prompt has 4 rewards yet
    grouped = train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(
        **TINY, sample_batch_size=4, sample_batches=1, images_per_prompt=2, train_batch_size=2,
        gradient_accumulation_steps=2))
    assert grouped.metrics[0]["advantage_fallback_share"] == 0.0


def _gradients_of_first_update(config: RLConfig, monkeypatch, **kwargs) -> list[torch.Tensor]:
    """The LoRA gradients at the first optimizer step of a run of `config` (then it stops)."""
    captured = []

    def capture(ctx, optimizer, loss, state, store, callback, total, preview):
        captured.extend(p.grad.detach().clone() for p in ctx.policy.params)
        return True

    monkeypatch.setattr(trainer, "_optimizer_step", capture)
    train_rl(tiny_components(0), brightness, PROMPTS, config, **kwargs)
    return captured


@pytest.mark.parametrize("method", ["ddpo", "rwr"])
def test_four_micro_batches_of_one_give_the_gradient_of_one_batch_of_four(method, monkeypatch):
    common = dict(TINY, method=method, sample_batch_size=4, sample_batches=1, images_per_prompt=2,
                  identifier_ratio=0.5, timestep_fraction=0.5)
    kwargs = {}
    if method == "ddpo":
        common["kl_weight"] = 0.5  # the KL guard on identifier samples is averaged the same way
        kwargs["base_lora"] = personalized_lora()
    else:
        kwargs["subject_images"] = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = _gradients_of_first_update(RLConfig(**common, train_batch_size=4, gradient_accumulation_steps=1),
                                       monkeypatch, **kwargs)
    split = _gradients_of_first_update(RLConfig(**common, train_batch_size=1, gradient_accumulation_steps=4),
                                       monkeypatch, **kwargs)
    assert len(whole) == len(split) > 0
    largest = max(g.abs().max().item() for g in whole)
    assert largest > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(b, a, atol=1e-6 * max(largest, 1.0), rtol=1e-4)


def test_resume_is_bit_exact_with_accumulation(tmp_path):
    config = RLConfig(**{**TINY, "epochs": 3}, sample_batch_size=4, sample_batches=2, images_per_prompt=2,
                      train_batch_size=2, gradient_accumulation_steps=2)  # 2 updates of 2 micro-batches per epoch
    assert config.total_updates == 6
    full = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path / "full")
    stopped = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path / "split",
                       callback=lambda report: report.step < 4)  # stops at the 2nd update of epoch 2
    assert stopped.epochs_done == 1
    resumed = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path / "split")
    assert resumed.epochs_done == 3
    for key, value in full.trained_state.items():
        assert torch.equal(resumed.trained_state[key], value), key
    assert any(v.abs().max() > 0 for k, v in full.trained_state.items() if "lora_up" in k)


def test_identifier_ratio_holds_per_epoch_with_one_prompt_per_batch():
    from instructbooth.rl.collect import draw_epoch_prompts
    from instructbooth.seeds import generator_for

    config = RLConfig(sample_batch_size=4, sample_batches=1, images_per_prompt=4, identifier_ratio=0.25,
                      gradient_accumulation_steps=1)  # one prompt per epoch
    flags = []
    for epoch in range(400):
        drawn = draw_epoch_prompts(PROMPTS, config, 4, generator_for(0, epoch, "prompts"))
        assert len({d.text for d in drawn}) == 1
        flags.append(drawn[0].group == IDENTIFIER)
    assert 0.19 < sum(flags) / len(flags) < 0.31  # binomial(400, 0.25): std 0.022
    exact = PROMPTS.draw(8, 0.25, torch.Generator().manual_seed(0))
    assert sum(d.group == IDENTIFIER for d in exact) == 2  # whole counts are exact, as before
