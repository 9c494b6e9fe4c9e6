"""The DDIM step with log-probability against diffusers and a direct Gaussian computation,
and trajectory sampling on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from instructbooth.components import make_noise_scheduler
from instructbooth.encoding import decode_latents
from instructbooth.sampling import (
    PromptEmbeddingCache,
    ddim_schedule,
    ddim_step,
    ddim_step_with_logprob,
    gaussian_log_prob,
    guided_noise_prediction,
    SamplerSettings,
    sample_images,
    sample_trajectories,
)

STEPS = 10


def _diffusers_ddim(steps=STEPS, **overrides):
    scheduler = DDIMScheduler.from_config({**make_noise_scheduler().config, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


def _random_step_inputs(seed=0, shape=(3, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_schedule_matches_diffusers_timesteps():
    schedule = ddim_schedule(make_noise_scheduler(), STEPS)
    assert schedule.timesteps.tolist() == _diffusers_ddim().timesteps.tolist() == list(range(901, 0, -100))
    assert schedule.step_ratio == 100
    assert schedule.final_alpha_cumprod == pytest.approx(float(schedule.alphas_cumprod[0]))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_mean_and_sample_equal_diffusers_step(eta, prediction_type):
    reference = _diffusers_ddim(prediction_type=prediction_type)
    schedule = ddim_schedule(reference, STEPS)
    model_output, sample, noise = _random_step_inputs()
    worst = 0.0
    for t in reference.timesteps.tolist():  # every step, the last one (to alpha_final) included
        ours = ddim_step(schedule, model_output, t, sample, eta, noise=noise if eta else None)
        mean = reference.step(model_output, t, sample, eta=eta, variance_noise=torch.zeros_like(noise)).prev_sample
        drawn = reference.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample
        worst = max(worst, (ours.mean - mean).abs().max().item(), (ours.prev_sample - drawn).abs().max().item())
    assert worst < 1e-5, f"DDIM step differs from diffusers by {worst}"


def test_log_prob_equals_direct_gaussian_density():
    """Recompute mean and sigma in float64 straight from the betas and compare densities."""
    schedule = ddim_schedule(make_noise_scheduler(), STEPS)
    model_output, sample, noise = _random_step_inputs(seed=1)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    eta, worst = 1.0, 0.0
    for t in schedule.timesteps.tolist():
        x_prev, log_prob = ddim_step_with_logprob(schedule, model_output, t, sample, eta, noise=noise)
        a_t = alpha_bar[t]
        a_prev = alpha_bar[t - 100] if t >= 100 else alpha_bar[0]
        eps, x = model_output.double(), sample.double()
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        direct = torch.distributions.Normal(mean, sigma).log_prob(x_prev.double()).mean(dim=(1, 2, 3))
        worst = max(worst, (log_prob.double() - direct).abs().max().item())
    assert worst < 1e-4, f"log-prob differs from the direct Gaussian density by {worst}"


def test_gaussian_log_prob_exact_numbers():
    x = torch.tensor([[1.0, 3.0]])
    mean = torch.tensor([[0.0, 1.0]])
    std = torch.tensor([[2.0]])
    # per element: -(d^2)/(2*4) - log 2 - log sqrt(2 pi), d = 1 and 2; mean of the two
    expected = -(1 / 8 + 4 / 8) / 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert gaussian_log_prob(x, mean, std).item() == pytest.approx(expected, abs=1e-6)


def test_scoring_a_stored_step_returns_its_sampling_log_prob_and_gradient():
    schedule = ddim_schedule(make_noise_scheduler(), STEPS)
    model_output, sample, noise = _random_step_inputs(seed=2)
    x_prev, sampled = ddim_step_with_logprob(schedule, model_output, 501, sample, 1.0, noise=noise)
    output = model_output.clone().requires_grad_(True)
    same, scored = ddim_step_with_logprob(schedule, output, 501, sample, 1.0, prev_sample=x_prev)
    assert torch.equal(same, x_prev)
    torch.testing.assert_close(scored, sampled)
    scored.sum().backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_per_sample_timesteps_equal_separate_steps():
    schedule = ddim_schedule(make_noise_scheduler(), STEPS)
    model_output, sample, noise = _random_step_inputs(seed=3)
    timesteps = torch.tensor([901, 401, 1])
    together = ddim_step(schedule, model_output, timesteps, sample, 1.0, noise=noise)
    for i, t in enumerate(timesteps.tolist()):
        alone = ddim_step(schedule, model_output[i : i + 1], t, sample[i : i + 1], 1.0, noise=noise[i : i + 1])
        torch.testing.assert_close(together.prev_sample[i : i + 1], alone.prev_sample)


def test_log_prob_needs_a_stochastic_step():
    schedule = ddim_schedule(make_noise_scheduler(), STEPS)
    model_output, sample, _ = _random_step_inputs()
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(schedule, model_output, 501, sample, 0.0)


def test_batched_guidance_equals_two_calls(tiny):
    cache = PromptEmbeddingCache(tiny)
    cond, uncond = cache(["a red plushie", "a blue cup"]), cache([""])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        guided = guided_noise_prediction(tiny.unet, latents, 501, cond, uncond, 4.0)
        c = tiny.unet(latents, 501, encoder_hidden_states=cond).sample
        u = tiny.unet(latents, 501, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
    torch.testing.assert_close(guided, u + 4.0 * (c - u), atol=1e-5, rtol=1e-5)


def test_embedding_cache_encodes_each_prompt_once(tiny, monkeypatch):
    import instructbooth.sampling.embeddings as sampling

    calls = []
    real = sampling.encode_prompts
    monkeypatch.setattr(sampling, "encode_prompts", lambda c, p: calls.append(list(p)) or real(c, p))
    cache = PromptEmbeddingCache(tiny)
    first = cache(["a", "b", "a"])
    again = cache(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    torch.testing.assert_close(first[1], again[0])
    assert first.shape == (3, 77, 32)


def test_trajectories_are_consistent_and_independent_of_batching(tiny):
    prompts, seeds = ["sks plushie riding a bicycle", "a plushie swimming", "a cup"], [11, 22, 33]
    settings = SamplerSettings(num_steps=4, guidance=3.0, eta=1.0, height=16, width=16)  # tiny VAE: 8x8 latents
    traj = sample_trajectories(tiny, prompts, seeds, settings)
    assert traj.latents.shape == (3, 5, 4, 8, 8)
    assert traj.log_probs.shape == (3, 4) and torch.isfinite(traj.log_probs).all()
    assert traj.timesteps.tolist() == [751, 501, 251, 1]

    alone = sample_trajectories(tiny, prompts[1:2], seeds[1:2], settings)
    torch.testing.assert_close(alone.latents[0], traj.latents[1], atol=1e-5, rtol=1e-5)

    # re-scoring the stored steps (as DDPO training does) gives the stored log-probs
    schedule = ddim_schedule(tiny.scheduler, 4)
    uncond = PromptEmbeddingCache(tiny)([""])
    for i, t in enumerate(traj.timesteps.tolist()):
        with torch.no_grad():
            out = guided_noise_prediction(tiny.unet, traj.latents[:, i], t, traj.prompt_embeds, uncond, 3.0)
        _, log_prob = ddim_step_with_logprob(schedule, out, t, traj.latents[:, i], 1.0, prev_sample=traj.latents[:, i + 1])
        torch.testing.assert_close(log_prob, traj.log_probs[:, i], atol=1e-5, rtol=1e-5)

    images = sample_images(tiny, prompts, seeds, settings)
    torch.testing.assert_close(images, decode_latents(tiny, traj.final_latents), atol=1e-5, rtol=1e-5)
    assert images.shape == (3, 3, 16, 16)

    picked = traj.select([2, 0])
    assert picked.prompts == [prompts[2], prompts[0]] and picked.seeds == [33, 11]
    assert len(type(traj).cat([picked, traj])) == 5


def test_generate_command_writes_seeded_images(tmp_path):
    from PIL import Image

    from instructbooth.cli import main
    from instructbooth.commands.generate import fill_subject, parse_lora_spec
    from instructbooth.lora.files import LoraMetadata

    out = tmp_path / "images"
    argv = ["generate", "--random-model", "tiny", "--prompt", "a red cup", "--prompt", "a blue cup", "--num-images", "2",
            "--seed", "7", "--steps", "3", "--height", "16", "--width", "16", "--batch-size", "3", "--output-dir", str(out)]
    assert main(argv) == 0
    records = __import__("json").loads((out / "images.json").read_text())["images"]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a red cup", 7), ("a red cup", 8), ("a blue cup", 7),
                                                            ("a blue cup", 8)]
    with Image.open(out / records[0]["file"]) as image:
        assert image.size == (16, 16)
    assert parse_lora_spec("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora_spec("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)
    meta = LoraMetadata(trigger_phrase="sks plushie", identifier="sks", class_noun="plushie")
    assert fill_subject(["{subject} swimming", "a {id} {cls} at sea", "a cat"], meta) == [
        "sks plushie swimming", "a sks plushie at sea", "a cat"]
    with pytest.warns(FutureWarning):
        assert fill_subject(["{id} swimming"], meta) == ["sks plushie swimming"]  # an older prompt's lone {id}
    only_trigger = LoraMetadata(trigger_phrase="zwx owl")
    assert fill_subject(["{subject} flying"], only_trigger) == ["zwx owl flying"]
    with pytest.raises(ValueError, match="records only its trigger phrase 'zwx owl'; write \\{subject\\}"):
        fill_subject(["a {id} {cls}"], only_trigger)
    with pytest.raises(ValueError, match="no LoRA names a subject"):
        fill_subject(["{subject} swimming"], None)
    assert main(["generate", "--random-model", "tiny", "--output-dir", str(out)]) == 1  # no prompt: a clear error
