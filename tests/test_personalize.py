"""Personalization (DreamBooth LoRA) and the shared training plumbing, on tiny CPU models.

Numbers in comments were measured on 2 CPU cores (torch 2.13); the assertions leave room.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from instructbooth.components import build_components, tiny_components, tiny_configs
from instructbooth.encoding import encode_images, encode_prompts
from instructbooth.lora import inject_lora, load_lora, load_lora_state
from instructbooth.personalize import (
    class_examples,
    PersonalizeConfig,
    dreambooth_loss,
    generate_class_images,
    personalize,
    save_result,
)
from instructbooth.subject_data import SubjectDataError
from instructbooth.training import (
    denoising_target,
    learning_rate_at,
    CheckpointStore,
    NonFiniteLossError,
    Precision,
    StepReport,
    StopTraining,
    capture_rng,
    config_mismatch,
    notify,
    restore_rng,
)

ID_PROMPT, NO_ID_PROMPT = "a photo of sks plushie", "a photo of plushie"


def subject_images(size: int, count: int = 4) -> torch.Tensor:
    """The subject: red with blue horizontal stripes, [count, 3, size, size]."""
    images = torch.zeros(count, 3, size, size)
    images[:, 0] = 0.95
    for i in range(count):
        images[i, 2, i % 2 :: 2, :] = 0.3
    return images


def class_images(size: int, count: int = 4) -> torch.Tensor:
    """Other plushies: green with red vertical stripes."""
    images = torch.zeros(count, 3, size, size)
    images[:, 1] = 0.9
    for i in range(count):
        images[i, 0, :, i % 2 :: 2] = 0.3
    return images


def bhwc(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 2, 3, 1).contiguous()  # ComfyUI's IMAGE layout


def small_config(**changes) -> PersonalizeConfig:
    base = PersonalizeConfig(resolution=32, steps=8, lora_rank=2, lora_alpha=2.0, learning_rate=1e-3, checkpoint_every=2)
    return dataclasses.replace(base, **changes)


def denoising_error(components, images: torch.Tensor, prompt: str, t_range=(50, 950), n: int = 16) -> float:
    """Mean squared error of the UNet's prediction on fixed noise and timesteps."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        latents = encode_images(components, images, generator=torch.Generator().manual_seed(7))
        latents = latents.repeat(n // len(images), 1, 1, 1)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.linspace(*t_range, n).long()
        embeddings = encode_prompts(components, [prompt] * n)
        noisy = components.scheduler.add_noise(latents, noise, timesteps)
        pred = components.unet(noisy, timesteps, embeddings).sample
        target = denoising_target(components.scheduler, latents, noise, timesteps)
        return float(((pred - target) ** 2).mean())


def with_lora(components, result, config):
    inject_lora(components, config.lora_config())
    load_lora_state(components, result.lora_state)
    return components


# --- losses: exact numbers ------------------------------------------------------------------------


def test_prior_preservation_loss_exact_numbers():
    # 2 instance rows, 1 class row, 1x1x2 "latents"
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]).view(3, 1, 1, 2)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 2.0]]).view(3, 1, 1, 2)
    parts = dreambooth_loss(pred, target, num_instance=2, prior_weight=0.5)
    assert parts.instance.item() == pytest.approx((1 + 4 + 1 + 1) / 4)  # 1.75
    assert parts.prior.item() == pytest.approx((4 + 1) / 2)  # 2.5
    assert parts.total.item() == pytest.approx(1.75 + 0.5 * 2.5)  # 3.0


def test_loss_without_class_rows_is_plain_mse():
    pred, target = torch.ones(2, 1, 1, 2), torch.zeros(2, 1, 1, 2)
    parts = dreambooth_loss(pred, target, num_instance=2, prior_weight=1.0)
    assert parts.total.item() == 1.0 and parts.prior.item() == 0.0


def test_denoising_target_follows_prediction_type():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([500])
    abar = scheduler.alphas_cumprod[500]
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    assert torch.allclose(denoising_target(scheduler, latents, noise, t), expected)
    assert denoising_target(DDPMScheduler(), latents, noise, t) is noise


def test_learning_rate_warms_up_linearly():
    config = PersonalizeConfig(learning_rate=1e-4, warmup_steps=4)
    assert [learning_rate_at(s, config) for s in range(6)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])


# --- training works -----------------------------------------------------------------------------------


def test_training_lowers_denoising_error_on_sd_family_model(tiny):
    images = subject_images(32)
    before = denoising_error(tiny, images, ID_PROMPT)  # 1.141
    config = small_config(steps=40, lora_rank=4, lora_alpha=4.0, checkpoint_every=0)
    result = personalize(tiny, bhwc(images), config)
    after = denoising_error(with_lora(tiny, result, config), images, ID_PROMPT)  # 1.062
    assert after < 0.97 * before
    assert len(result.loss_history) == 40 and result.steps_done == 40 and not result.stopped


def binding_components(seed: int = 0):
    """A tiny pixel-space model (no VAE; 8x8 images fold into 12x4x4) with v-prediction
    and a schedule that reaches pure noise by t ~ 500.

    Why not the VAE/epsilon model: with tiny images the noisy input itself reveals which
    image is being denoised at almost every noise level, so an epsilon-predicting model
    gains next to nothing from the prompt and the identifier's effect is unmeasurable in
    a few dozen steps. With v-prediction at high noise the target is (minus) the image, and
    only the prompt says which one: the identifier binding becomes a first-order effect.
    The trainer code is the same for both."""
    unet, _, text = tiny_configs()
    unet.update(in_channels=12, out_channels=12)
    parts = build_components(unet, None, text, seed=seed)
    parts.scheduler = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.05,
                                    prediction_type="v_prediction")
    return parts


def test_identifier_binds_the_subject_with_prior_preservation():
    parts = binding_components()
    subject, others = subject_images(8), class_images(8)
    t_range = (100, 600)
    before = denoising_error(parts, subject, ID_PROMPT, t_range)  # 0.948
    config = PersonalizeConfig(resolution=8, steps=60, batch_size=4, lora_rank=4, lora_alpha=16.0, learning_rate=1e-2,
                               prior_preservation=True, checkpoint_every=0)
    result = personalize(parts, bhwc(subject), config, class_images=bhwc(others))
    with_lora(parts, result, config)
    with_id = denoising_error(parts, subject, ID_PROMPT, t_range)  # 0.645 (seeds 0-6: 0.54-0.65)
    without_id = denoising_error(parts, subject, NO_ID_PROMPT, t_range)  # 1.105 (0.97-1.11)
    class_with_id = denoising_error(parts, others, ID_PROMPT, t_range)  # 0.903
    class_without_id = denoising_error(parts, others, NO_ID_PROMPT, t_range)  # 0.491
    assert with_id < 0.85 * before
    assert with_id < 0.8 * without_id  # the identifier, not the whole prompt, carries the subject
    assert class_without_id < class_with_id  # the class prompt still means the class
    losses = result.loss_history
    assert sum(losses[-15:]) / 15 < 0.9 * sum(losses[:15]) / 15  # 1.55 -> 1.16


# --- checkpoints and resume -------------------------------------------------------------------------


def test_resume_gives_the_same_lora_bit_for_bit(tmp_path):
    config = small_config(prior_preservation=True)
    images, others = bhwc(subject_images(32, 3)), bhwc(class_images(32, 3))
    straight = personalize(tiny_components(), images, config, class_images=others)

    first = personalize(tiny_components(), images, config, class_images=others, checkpoint_dir=tmp_path,
                        callback=lambda report: report.step < 3)
    assert first.stopped and first.steps_done == 3 and first.last_checkpoint.name == "checkpoint-0000003.pt"
    resumed = personalize(tiny_components(), images, config, class_images=others, checkpoint_dir=tmp_path)

    assert resumed.steps_done == 8 and not resumed.stopped
    assert resumed.loss_history == straight.loss_history
    assert resumed.lora_state.keys() == straight.lora_state.keys()
    for key, value in straight.lora_state.items():
        assert torch.equal(resumed.lora_state[key], value), key
    assert [p.name for p in CheckpointStore(tmp_path).paths()] == ["checkpoint-0000006.pt", "checkpoint-0000008.pt"]


def test_resume_refuses_other_settings_but_allows_more_steps(tmp_path):
    images = bhwc(subject_images(32, 2))
    personalize(tiny_components(), images, small_config(steps=4), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="learning_rate"):
        personalize(tiny_components(), images, small_config(steps=4, learning_rate=5e-4), checkpoint_dir=tmp_path)
    longer = personalize(tiny_components(), images, small_config(steps=6), checkpoint_dir=tmp_path)
    assert longer.steps_done == 6 and len(longer.loss_history) == 6
    fresh = personalize(tiny_components(), images, small_config(steps=2), checkpoint_dir=tmp_path, resume=False)
    assert fresh.steps_done == 2 and CheckpointStore(tmp_path).latest().name == "checkpoint-0000002.pt"


def test_stop_by_exception_and_reports(tmp_path):
    reports = []

    def callback(report: StepReport):
        reports.append(report)
        if report.step == 2:
            raise StopTraining

    result = personalize(tiny_components(), bhwc(subject_images(32, 2)), small_config(), callback=callback)
    assert result.stopped and result.steps_done == 2 and len(result.loss_history) == 2
    assert [(r.step, r.total) for r in reports] == [(1, 8), (2, 8)]
    assert reports[0].loss == result.loss_history[0] and reports[0].preview is None


def test_validation_images_and_preview():
    previews = []
    config = small_config(steps=4, validation_prompts=("a photo of {id} {cls} on a beach", "a {cls}"),
                          validation_every=2, validation_steps=2)
    result = personalize(tiny_components(), bhwc(subject_images(32, 2)), config,
                         callback=lambda r: previews.append(r.preview))
    assert [v.step for v in result.validation] == [2, 4]
    assert result.validation[0].prompts == ["a photo of sks plushie on a beach", "a plushie"]
    assert result.validation[0].images.shape == (2, 3, 32, 32)
    assert previews[0] is None and isinstance(previews[1], Image.Image) and previews[1].size == (32, 32)


def test_save_result_writes_lora_with_metadata_and_losses(tmp_path):
    config = small_config(steps=3, description="with a blue star on its belly")
    result = personalize(tiny_components(), bhwc(subject_images(32, 2)), config, base_model_hash="ab" * 32)
    path = save_result(result, tmp_path / "sks.safetensors")
    state, meta = load_lora(path)
    assert state.keys() == result.lora_state.keys()
    assert meta.trigger_phrase == "sks plushie" and meta.identifier == "sks" and meta.class_noun == "plushie"
    assert meta.description == "with a blue star on its belly" and meta.method == "personalize"
    assert meta.rank == 2 and meta.alpha == 2.0 and meta.base_model_hash == "ab" * 32
    assert meta.training_config["steps_done"] == 3 and meta.training_config["learning_rate"] == 1e-3
    losses = json.loads((tmp_path / "sks.loss.json").read_text())
    assert losses["loss"] == result.loss_history and losses["steps_done"] == 3


# --- options give the same training -------------------------------------------------------------------


def test_uncached_and_checkpointed_runs_match_the_cached_run():
    images = bhwc(subject_images(32, 2))
    cached = personalize(tiny_components(), images, small_config(steps=4))
    uncached = personalize(tiny_components(), images, small_config(steps=4, cache=False, gradient_checkpointing=True))
    assert uncached.loss_history == pytest.approx(cached.loss_history, rel=1e-5)
    for key, value in cached.lora_state.items():
        assert torch.allclose(uncached.lora_state[key], value, atol=1e-6), key


def test_bf16_mixed_precision_keeps_lora_in_fp32():
    parts = tiny_components()
    config = small_config(steps=3, mixed_precision="bf16", train_text_encoder=True)
    result = personalize(parts, bhwc(subject_images(32, 2)), config)
    assert all(v.dtype == torch.float32 for v in result.lora_state.values())
    assert any(k.startswith("lora_te_") for k in result.lora_state)
    assert all(torch.isfinite(torch.tensor(result.loss_history)))
    assert parts.unet.conv_in.weight.dtype == torch.bfloat16  # frozen weights stay 16-bit (documented)


def test_generated_class_images_are_deterministic_and_used():
    parts = tiny_components()
    config = small_config(steps=2, prior_preservation=True, num_class_images=2, class_sample_steps=2)
    first = generate_class_images(parts, "a photo of plushie", config)
    again = generate_class_images(parts, "a photo of plushie", config, count=1, first=1)
    assert first.shape == (2, 3, 32, 32) and torch.equal(first[1:], again)
    assert torch.equal(first, (first * 255).round() / 255)  # 8-bit values, as if saved as PNG
    reports = []
    result = personalize(parts, bhwc(subject_images(32, 2)), config, callback=reports.append)
    assert result.steps_done == 2
    assert [(r.stage, r.step, r.total) for r in reports] == [("class_images", 2, 2), ("train", 1, 2), ("train", 2, 2)]


def test_class_images_default_to_deterministic_ddim_at_50_steps_and_flips_are_off():
    from instructbooth.commands.personalize import add_arguments, config_from_args
    from instructbooth.sampling import SamplerSettings, sample_images

    defaults = PersonalizeConfig()
    assert (defaults.class_sample_steps, defaults.class_eta, defaults.flip) == (50, 0.0, False)
    assert (defaults.validation_steps, defaults.validation_eta) == (50, 0.0)
    parts = tiny_components()
    config = small_config(prior_preservation=True, num_class_images=2, class_sample_steps=3)
    generated = generate_class_images(parts, "a photo of plushie", config)
    seeds = [config.seed + 1_000_000 + i for i in range(2)]
    plain_ddim = sample_images(parts, ["a photo of plushie"] * 2, seeds, SamplerSettings(3, config.class_guidance, 0.0,
                                                                                         32, 32))
    noisy = sample_images(parts, ["a photo of plushie"] * 2, seeds, SamplerSettings(3, config.class_guidance, 1.0, 32, 32))
    assert torch.equal(generated, (plain_ddim * 255).round() / 255)
    assert not torch.equal(generated, (noisy * 255).round() / 255)
    assert torch.equal(generate_class_images(parts, "a photo of plushie", dataclasses.replace(config, class_eta=1.0)),
                       (noisy * 255).round() / 255)

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--checkpoint", "x", "--images", "p", "--output", "o.safetensors"]
    assert config_from_args(parser.parse_args(base)).flip is False
    flipped = config_from_args(parser.parse_args(base + ["--flip", "--class-sample-steps", "25", "--class-eta", "1"]))
    assert (flipped.flip, flipped.class_sample_steps, flipped.class_eta) == (True, 25, 1.0)


def test_stop_while_class_images_are_generated(tmp_path):
    config = small_config(steps=3, prior_preservation=True, num_class_images=12, class_sample_steps=2)
    reports = []

    def stop_after_first_batch(report):
        reports.append((report.stage, report.step, report.total))
        return False

    result = personalize(tiny_components(), bhwc(subject_images(32, 2)), config, callback=stop_after_first_batch,
                         checkpoint_dir=tmp_path)
    assert reports == [("class_images", 4, 12)]  # one batch of 4, not all 12 images
    assert result.stopped and result.steps_done == 0 and result.loss_history == []
    assert result.last_checkpoint is None and not list(tmp_path.glob("checkpoint-*"))


def test_given_class_images_use_their_captions(tmp_path):
    config = small_config(prior_preservation=True)
    for i, caption in enumerate(["two red circles", "", "a {cls} on grass"]):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / f"c{i}.png")
        if caption:
            (tmp_path / f"c{i}.txt").write_text(caption)
    examples = class_examples(tmp_path, config, tiny_components())
    assert examples.prompts == ["two red circles", "a photo of plushie", "a plushie on grass"]
    (tmp_path / "c1.txt").write_text("{id} on grass")
    with pytest.raises(SubjectDataError, match="contains the identifier 'sks'"):
        class_examples(tmp_path, config, tiny_components())


# --- bad input ----------------------------------------------------------------------------------------


def test_no_images_is_an_error(tmp_path):
    with pytest.raises(SubjectDataError, match="no subject images"):
        personalize(tiny_components(), tmp_path, small_config())


def test_corrupt_image_is_named(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SubjectDataError, match="broken.jpg"):
        personalize(tiny_components(), tmp_path, small_config())


def test_much_smaller_images_are_an_error_unless_upscaling_is_allowed(tmp_path):
    Image.new("RGB", (12, 12), "red").save(tmp_path / "tiny.png")
    with pytest.raises(SubjectDataError, match="tiny.png.*much smaller"):
        personalize(tiny_components(), tmp_path, small_config())
    assert personalize(tiny_components(), tmp_path, small_config(steps=1, allow_upscale=True)).steps_done == 1


def test_template_without_identifier_is_an_error():
    with pytest.raises(SubjectDataError, match=r"no \{id\}"):
        personalize(tiny_components(), bhwc(subject_images(32, 1)), small_config(instance_template="a photo of {cls}"))


def test_bad_settings_are_errors():
    images = bhwc(subject_images(32, 1))
    with pytest.raises(ValueError, match="multiple of 4"):
        personalize(tiny_components(), images, small_config(resolution=30))
    with pytest.raises(ValueError, match="mixed precision"):
        personalize(tiny_components(), images, small_config(mixed_precision="fp8"))
    with pytest.raises(ValueError, match="validation_prompts"):
        personalize(tiny_components(), images, small_config(validation_every=2))
    with pytest.raises(SubjectDataError, match="unknown placeholders"):  # before training, not at step N
        personalize(tiny_components(), images, small_config(validation_prompts=("{who} on a beach",)))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    parts = tiny_components()
    calls = {"n": 0}

    def poison(module, args, output):  # the UNet's 3rd forward pass returns NaN
        calls["n"] += 1
        if calls["n"] == 3:
            output.sample = torch.full_like(output.sample, float("nan"))
        return output

    parts.unet.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="step 3.*checkpoint-0000002.pt") as error:
        personalize(parts, bhwc(subject_images(32, 2)), small_config(checkpoint_every=1), checkpoint_dir=tmp_path)
    assert error.value.step == 3 and error.value.last_checkpoint.name == "checkpoint-0000002.pt"
    assert CheckpointStore(tmp_path).latest().name == "checkpoint-0000002.pt"
    saved = CheckpointStore(tmp_path).load()
    assert all(torch.isfinite(v).all() for v in saved["trainable"].values())


# --- training.py plumbing -----------------------------------------------------------------------------


def test_checkpoint_store_keeps_newest_and_restores_rng(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    generator = torch.Generator().manual_seed(5)
    for step in (1, 2, 3):
        store.save(step, {"rng": capture_rng({"g": generator}), "values": [1.0, 2.0], "name": "x"})
    assert [p.name for p in store.paths()] == ["checkpoint-0000002.pt", "checkpoint-0000003.pt"]
    expected = torch.rand(3, generator=generator)
    saved = store.load()
    restore_rng({"g": generator}, saved["rng"])
    assert saved["step"] == 3 and torch.equal(torch.rand(3, generator=generator), expected)
    (tmp_path / "checkpoint-0000009.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="checkpoint-0000009.pt"):
        store.load()
    store.clear()
    assert store.latest() is None and store.load() is None


def test_callback_protocol_and_config_mismatch():
    report = StepReport(1, 2, 0.5)
    assert notify(None, report) is False
    assert notify(lambda r: None, report) is False and notify(lambda r: True, report) is False
    assert notify(lambda r: False, report) is True

    def cancel(r):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # other exceptions (ComfyUI's cancel) propagate
        notify(cancel, report)
    assert config_mismatch({"a": 1, "b": 2, "steps": 3}, {"a": 1, "b": 5, "steps": 9}, ["steps"]) == ["b"]
    with pytest.raises(ValueError, match="mixed precision"):
        Precision.create("fp32", "cpu")


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_trains_and_writes_lora(tmp_path, capsys):
    from instructbooth.checkpoint import save_checkpoint
    from instructbooth.cli import main

    base = save_checkpoint(tiny_components(), tmp_path / "base.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(subject_images(32, 2)):
        Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(photos / f"{i}.png")
    (photos / "0.txt").write_text("a photo of {id} {cls} on a table")
    out = tmp_path / "out" / "sks.safetensors"
    args = ["personalize", "--checkpoint", str(base), "--images", str(photos), "--output", str(out),
            "--resolution", "32", "--steps", "3", "--rank", "2", "--alpha", "2", "--log-every", "1",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--prior-preservation", "--num-class-images", "1",
            "--class-images", str(tmp_path / "class"), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "step 3/3" in printed and "wrote" in printed
    _, meta = load_lora(out)
    assert meta.identifier == "sks" and len(meta.base_model_hash) == 64
    assert (tmp_path / "class" / "class-00000.png").is_file()
    assert json.loads(out.with_suffix(".loss.json").read_text())["steps_done"] == 3

    bad = args[:-2] + ["--device", "cpu", "--instance-template", "a photo of {cls}"]
    assert main(bad) == 1
    assert "no {id}" in capsys.readouterr().err
