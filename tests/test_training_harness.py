"""The harness every trainer shares (instructbooth/training/harness.py, denoising.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import ClassVar

import pytest
import torch

from instructbooth.demo.pretrain import PretrainConfig
from instructbooth.personalize import PersonalizeConfig
from instructbooth.preference.dpo import DPOConfig
from instructbooth.rl.config import RLConfig
from instructbooth.training import (
    NonFiniteLossError,
    Precision,
    adamw,
    check_resumable,
    draw_noise,
    guarded_step,
    learning_rate_at,
    per_sample_mse,
    resumable_changes,
    trainer_state,
    training_mode,
)

STAGE_CONFIGS = [PersonalizeConfig, RLConfig, DPOConfig, PretrainConfig]


@dataclass(frozen=True)
class ToyConfig:
    RUN_LENGTH: ClassVar[str] = "steps"
    RUN_CONTROL: ClassVar[tuple[str, ...]] = ("checkpoint_every",)
    steps: int = 4
    checkpoint_every: int = 1
    learning_rate: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def to_dict(self) -> dict:
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}))


@pytest.mark.parametrize("config_class", STAGE_CONFIGS)
def test_every_stage_config_marks_its_resumable_fields_among_its_fields(config_class):
    names = {f.name for f in fields(config_class)}
    assert set(resumable_changes(config_class())) <= names
    assert config_class.RUN_LENGTH in ("steps", "epochs") and config_class.RUN_LENGTH not in config_class.RUN_CONTROL
    assert {"learning_rate", "weight_decay", "adam_betas", "adam_eps", "max_grad_norm"} <= names  # one optimizer


def test_training_mode_enables_grad_under_inference_mode_and_restores_modes():
    trained, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).train()
    trained.eval()
    with torch.inference_mode():
        with training_mode([trained, frozen], trained=[trained]):
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert trained.training and not frozen.training
            trained(torch.ones(1, 2)).sum().backward()
        assert torch.is_inference_mode_enabled()
    assert not trained.training and frozen.training and trained.weight.grad is not None


def test_guarded_step_refuses_a_non_finite_loss_before_any_backward_pass():
    layer = torch.nn.Linear(2, 1)
    params = list(layer.parameters())
    optimizer = adamw(params, ToyConfig())
    loss = layer(torch.ones(1, 2)).sum() * float("nan")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 3; stopped, no checkpoint"):
        guarded_step(optimizer, params, Precision.create("no", "cpu"), loss, 3, None, 1.0)
    assert all(p.grad is None for p in params)  # nothing was back-propagated


def test_guarded_step_steps_clips_and_zeroes_and_refuses_non_finite_gradients():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    params, precision = list(layer.parameters()), Precision.create("no", "cpu")
    optimizer = torch.optim.SGD(params, lr=1.0)
    value = guarded_step(optimizer, params, precision, (layer(torch.tensor([[3.0, 4.0]])) * 10).sum(), 1, None, 1.0)
    assert value == pytest.approx(70.0)
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[1 - 0.6, 1 - 0.8]]))  # grad (30, 40) clipped to 1
    assert params[0].grad is None
    (layer(torch.tensor([[float("inf"), 0.0]])) * 0 + 1).sum().backward()  # finite loss, infinite gradient
    with pytest.raises(NonFiniteLossError, match="gradient norm"):
        guarded_step(optimizer, params, precision, 1.0, 2, None, 1.0)


def test_warm_up_is_linear_then_constant_for_every_stage():
    config = PersonalizeConfig(learning_rate=1e-4, warmup_steps=4)
    assert [learning_rate_at(s, config) for s in range(6)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert learning_rate_at(0, RLConfig(learning_rate=3e-4)) == 3e-4  # RL has no warm-up field


def test_resume_allows_the_run_length_and_run_control_and_names_other_changes():
    layer = torch.nn.Linear(2, 1)
    config = ToyConfig()
    saved = {"step": 2, **trainer_state(config, adamw(layer.parameters(), config), Precision.create("no", "cpu"))}
    check_resumable(saved, ToyConfig(steps=8, checkpoint_every=3), "toy")
    with pytest.raises(ValueError, match=r"the toy checkpoint at step 2 .*\(learning_rate, the data\); use the same"):
        check_resumable(saved, ToyConfig(learning_rate=0.2), "toy", ["the data"])
    assert json.loads(saved["config"])["learning_rate"] == 0.1


def test_noise_is_drawn_before_timesteps_and_per_sample_error_averages_all_but_the_batch():
    class Scheduler:
        class config:
            num_train_timesteps = 1000

    latents = torch.zeros(2, 4, 3, 3)
    noise, timesteps = draw_noise(Scheduler, latents, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(noise, torch.randn(latents.shape, generator=generator))
    torch.testing.assert_close(timesteps, torch.randint(0, 1000, (2,), generator=generator))
    errors = per_sample_mse(torch.ones(2, 4, 3, 3), torch.cat([torch.zeros(1, 4, 3, 3), torch.full((1, 4, 3, 3), 3.0)]))
    torch.testing.assert_close(errors, torch.tensor([1.0, 4.0]))
