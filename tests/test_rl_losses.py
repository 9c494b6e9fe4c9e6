"""The pure RL pieces with hand-computed numbers: clipped DDPO loss, advantage
normalisation (batch, group, per-prompt tracker), clipping, RWR weights and loss."""

from __future__ import annotations

import math

import pytest
import torch

from instructbooth.rl.advantages import (
    EPS,
    PerPromptStatTracker,
    batch_normalize,
    clip_advantages,
    group_normalize,
)
from instructbooth.rl.ddpo import ddpo_loss, gaussian_step_kl
from instructbooth.rl.rwr import denoising_error, reward_weights, rwr_loss


def test_ddpo_loss_exact_numbers_and_gradient():
    ratios = torch.tensor([1.0, 1.5, 0.5, 1.05], dtype=torch.float64)
    old = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    new = (old + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, -2.0, -1.0], dtype=torch.float64)
    out = ddpo_loss(new, old, advantages, clip_range=0.1)
    # per sample max(-A r, -A clamp(r, .9, 1.1)): -1, -1.1 (clipped), 1.8 (clipped), 1.05
    assert out.loss.item() == pytest.approx((-1 - 1.1 + 1.8 + 1.05) / 4, abs=1e-12)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.05) ** 2) / 4
    assert out.approx_kl.item() == pytest.approx(expected_kl, abs=1e-12)
    out.loss.backward()
    # clipped samples get no gradient; inside the range d/dlogp (-A r)/B = -A r / 4
    torch.testing.assert_close(new.grad, torch.tensor([-0.25, 0.0, 0.0, 1.05 / 4], dtype=torch.float64))


def test_ddpo_loss_at_ratio_one_is_minus_mean_advantage():
    log_prob = torch.zeros(3, requires_grad=True)
    out = ddpo_loss(log_prob, torch.zeros(3), torch.tensor([2.0, -1.0, 0.5]), clip_range=1e-4)
    assert out.loss.item() == pytest.approx(-0.5)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0
    with pytest.raises(ValueError, match="clip_range"):
        ddpo_loss(log_prob, log_prob, log_prob, 0.0)


def test_gaussian_step_kl_exact():
    mean = torch.ones(2, 3, 4, 4)
    kl = gaussian_step_kl(mean, torch.zeros_like(mean), torch.full((2, 1, 1, 1), 2.0))
    torch.testing.assert_close(kl, torch.full((2,), 1 / 8))


def test_batch_and_group_normalisation():
    adv = batch_normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(1.25)
    torch.testing.assert_close(adv, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + EPS))

    rewards = torch.tensor([1.0, 3.0, 10.0, 20.0, 5.0])
    adv = group_normalize(rewards, ["a", "a", "b", "b", "c"])
    expected = torch.tensor([-1 / (1 + EPS), 1 / (1 + EPS), -5 / (5 + EPS), 5 / (5 + EPS), 0.0])
    torch.testing.assert_close(adv, expected)
    with pytest.raises(ValueError, match="keys"):
        group_normalize(rewards, ["a"])


def test_stat_tracker_exact_numbers_buffer_and_fallback():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    adv = tracker.normalize(["a", "a", "b"], torch.tensor([1.0, 3.0, 5.0]))
    # a: its own two rewards (mean 2, std 1); b: one reward < min_count -> batch mean 3, std sqrt(8/3)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 2 / math.sqrt(8 / 3)]), atol=1e-5, rtol=0)
    adv = tracker.normalize(["a", "b"], torch.tensor([8.0, 7.0]))
    # a: buffer [1, 3, 8] mean 4 std sqrt(26/3); b: buffer [5, 7] mean 6 std 1
    torch.testing.assert_close(adv, torch.tensor([4 / math.sqrt(26 / 3), 1.0]), atol=1e-5, rtol=0)
    adv = tracker.normalize(["a"], torch.tensor([0.0]))  # buffer keeps the newest 3: [3, 8, 0]
    torch.testing.assert_close(adv, torch.tensor([-1.1111678]), atol=1e-5, rtol=0)
    assert tracker.stats()["b"] == {"mean": 6.0, "std": 1.0, "count": 2}

    copy = PerPromptStatTracker()
    copy.load_state_dict(tracker.state_dict())
    assert copy.buffer_size == 3 and copy.stats() == tracker.stats()
    torch.testing.assert_close(copy.normalize(["a"], torch.tensor([2.0])), tracker.normalize(["a"], torch.tensor([2.0])))


def test_clip_advantages():
    torch.testing.assert_close(clip_advantages(torch.tensor([-7.0, 0.5, 3.0]), 2.0), torch.tensor([-2.0, 0.5, 2.0]))
    assert clip_advantages(torch.tensor([9.0]), None).item() == 9.0
    with pytest.raises(ValueError):
        clip_advantages(torch.tensor([1.0]), 0.0)


def test_reward_weights_exact():
    torch.testing.assert_close(reward_weights(torch.tensor([0.0, math.log(3.0)])), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(reward_weights(torch.tensor([0.0, 2.0]), temperature=2.0),
                               2 * torch.softmax(torch.tensor([0.0, 1.0]), 0))
    torch.testing.assert_close(reward_weights(torch.tensor([1.0, 2.0, 4.0]), "linear"), torch.tensor([0.0, 0.75, 2.25]))
    torch.testing.assert_close(reward_weights(torch.tensor([3.0, 3.0]), "linear"), torch.ones(2))
    with pytest.raises(ValueError, match="weighting"):
        reward_weights(torch.ones(2), "square")


def test_rwr_loss_exact():
    target = torch.zeros(2, 1, 2, 2)
    prediction = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)])
    torch.testing.assert_close(denoising_error(prediction, target), torch.tensor([1.0, 4.0]))
    prior_prediction, prior_target = torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 2, 2)
    out = rwr_loss(prediction, target, torch.tensor([0.5, 1.5]), prior_prediction, prior_target, rwr_beta=0.1)
    assert out.weighted.item() == pytest.approx((0.5 * 1 + 1.5 * 4) / 2)
    assert out.prior.item() == pytest.approx(9.0)
    assert out.loss.item() == pytest.approx(3.25 + 0.9)
    assert rwr_loss(prediction, target, torch.ones(2)).prior.item() == 0.0
