"""RL with `parallel_batches` > 1: sampling batches and micro-batches in worker threads give the
same run bit for bit; `in_order` keeps order, runs jobs at once and passes errors on; the
settings that cannot share threads are refused."""

from __future__ import annotations

import threading

import pytest
import torch

from instructbooth.components import tiny_components
from instructbooth.rl.config import RLConfig
from instructbooth.rl.trainer import train_rl
from instructbooth.threads import in_order
from instructbooth.training import GradientRecorder, Precision
from test_rl_trainer import PROMPTS, brightness, personalized_lora

# 4 sampling batches of 4 (2 prompts x 2 images), micro-batches of 2, 4 per update: 2 updates per epoch
THREADED = dict(sample_steps=4, guidance=2.0, height=16, width=16, sample_batch_size=4, sample_batches=4, epochs=2,
                train_batch_size=2, gradient_accumulation_steps=4, images_per_prompt=2, advantage="group",
                learning_rate=3e-2, clip_range=1e-2, heldout_every=1, heldout_seeds=1, identifier_ratio=0.5,
                timestep_window=1.0, timestep_fraction=0.5)


def run(workers: int):
    config = RLConfig(**THREADED, parallel_batches=workers)
    return train_rl(tiny_components(0), brightness, PROMPTS, config, base_lora=personalized_lora())


def test_threads_give_the_same_run_bit_for_bit():
    one, three = run(1), run(3)
    assert one.lora_state.keys() == three.lora_state.keys()
    ups = [v for k, v in one.trained_state.items() if k.endswith("lora_up.weight")]
    assert max(float(v.abs().max()) for v in ups) > 0.01  # the up weights start at 0: the run trained
    assert one.metrics[1]["approx_kl"] > 0  # and the second epoch sampled from the updated model
    for key, value in one.lora_state.items():
        assert torch.equal(value, three.lora_state[key]), key
    for a, b in zip(one.metrics, three.metrics):
        assert a["reward"] == b["reward"] and a["loss"] == b["loss"] and a["approx_kl"] == b["approx_kl"]


def test_recorded_gradients_add_up_as_backward_does():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 3)
    inputs = [torch.randn(5, 8) for _ in range(3)]
    for x in inputs:
        layer(x).square().mean().backward()
    direct = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    recorder = GradientRecorder(Precision.create("no", "cpu"), list(layer.parameters()))
    for x in inputs:
        recorder.backward(layer(x).square().mean())
    assert all(p.grad is None for p in layer.parameters())  # nothing written until add_to
    recorder.add_to()
    assert all(torch.equal(p.grad, d) for p, d in zip(layer.parameters(), direct))


def test_in_order_keeps_the_order_and_runs_jobs_at_once():
    barrier = threading.Barrier(2, timeout=10)  # each job waits for the other: only two at once can finish

    def job(value):
        def run_it():
            barrier.wait()
            return value
        return run_it

    assert list(in_order([job("a"), job("b")], workers=2)) == ["a", "b"]
    ran = []
    lazy = in_order([lambda: ran.append(1) or 1, lambda: ran.append(2) or 2], workers=1)
    assert ran == [] and next(lazy) == 1 and ran == [1]  # one worker: each job when its result is asked for


def test_in_order_passes_a_job_error_on():
    def fails():
        raise RuntimeError("batch 2 failed")

    with pytest.raises(RuntimeError, match="batch 2 failed"):
        list(in_order([lambda: 1, fails, lambda: 3], workers=2))


@pytest.mark.parametrize("settings, message", [
    (dict(parallel_batches=0), "parallel_batches must be >= 1"),
    (dict(parallel_batches=2, method="rwr"), "cannot be used with method 'rwr'"),
    (dict(parallel_batches=2, kl_weight=0.5), "cannot be used with kl_weight > 0"),
    (dict(parallel_batches=2, mixed_precision="fp16"), "cannot be used with fp16"),
])
def test_settings_that_cannot_share_threads_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RLConfig(**settings)
