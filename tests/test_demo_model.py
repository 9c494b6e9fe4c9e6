"""The demo model: word tokenizer, builder, save/load, the pretraining loop and the shipped weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from instructbooth.demo import world
from instructbooth.demo.checker import attribute_accuracy
from instructbooth.demo.model import (
    DemoModelConfig,
    WordTokenizer,
    base_vocabulary,
    build_demo_components,
    load_demo_card,
    load_demo_components,
    save_demo_model,
    shipped_weights_path,
)
from instructbooth.demo.pretrain import PretrainConfig, learning_rate, pretrain
from instructbooth.demo.evaluate import SamplerConfig, sample_world
from instructbooth.encoding import decode_latents, encode_images, encode_prompts, tokenize

SMOKE = PretrainConfig(steps=4, batch_size=8, warmup_steps=2, checkpoint_every=2, log_every=2)


@pytest.fixture(scope="module")
def fresh():
    return build_demo_components(seed=0)


def test_tokenizer_quacks_like_clip():
    tokenizer = WordTokenizer(base_vocabulary(), model_max_length=8)
    out = tokenizer(["Two red circles, on a white background!", "sks toy"], padding="max_length",
                    max_length=8, truncation=True, return_tensors="pt")
    assert out.input_ids.shape == (2, 8) and out["input_ids"] is out.input_ids
    assert tokenizer.decode(out.input_ids[0]) == "two red circles on a white"  # truncated to 8 with <eos>
    assert out.input_ids[0, -1] == tokenizer.eos_token_id
    assert out.input_ids[1].tolist()[:4] == [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(["sks", "toy"]),
                                             tokenizer.eos_token_id]
    assert out.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert tokenizer.encode("a zebra")[1:3] == [tokenizer.convert_tokens_to_ids("a"), tokenizer.unk_token_id]


def test_tokenizer_spare_slots():
    tokenizer = WordTokenizer(base_vocabulary())
    size = len(tokenizer)
    assert tokenizer.add_tokens(["zxq", "sks"]) == 1  # "sks" is already there
    assert len(tokenizer) == size and tokenizer.decode(tokenizer.encode("zxq toy")) == "zxq toy"
    with pytest.raises(ValueError, match="no spare"):
        tokenizer.add_tokens([f"word{i}" for i in range(100)])


def test_vocabulary_covers_every_prompt_word():
    from instructbooth.demo import prompts

    vocabulary = set(base_vocabulary())
    texts = world.captions("all") + prompts.subject_prompts("train", detailed=True) + prompts.subject_prompts(
        "heldout", subject="class")
    assert {w for t in texts for w in t.split()} <= vocabulary


def test_builder_shapes_and_encoding(fresh):
    unet = fresh.unet
    assert fresh.vae is None and fresh.latent_scale == 1.0
    assert tuple(unet.config.block_out_channels) == (48, 64, 96)
    assert unet.config.down_block_types[0] == "DownBlock2D"  # no attention at 16x16
    assert 2.5e6 < sum(p.numel() for p in unet.parameters()) < 3.5e6
    assert tokenize(fresh, ["two red circles on a white background"]).shape == (1, 24)
    images = torch.rand(2, 3, 32, 32)
    latents = encode_images(fresh, images)
    assert latents.shape == (2, 12, 16, 16) and torch.allclose(decode_latents(fresh, latents), images, atol=1e-6)
    context = encode_prompts(fresh, ["sks toy on a white background", ""])
    with torch.no_grad():
        out = unet(latents, torch.tensor([10, 500]), context).sample
    assert context.shape == (2, 24, 64) and out.shape == latents.shape
    config = fresh.scheduler.config
    assert (config.prediction_type, config.timestep_spacing, config.clip_sample) == ("v_prediction", "trailing", True)
    assert 0 < fresh.scheduler.alphas_cumprod[-1] < 1e-6  # (nearly) zero terminal SNR: x_999 is noise


def test_stochastic_ddim_from_the_last_timestep_is_finite(fresh):
    from instructbooth.sampling import ddim_schedule, ddim_step

    for steps in (10, 50, 1000):
        schedule = ddim_schedule(fresh.scheduler, steps)
        t = int(schedule.timesteps[0])
        sample = torch.randn(2, 12, 16, 16)
        out = ddim_step(schedule, torch.randn_like(sample), t, sample, eta=1.0, noise=torch.randn_like(sample))
        assert t == 999 and torch.isfinite(out.prev_sample).all(), steps


def test_save_and_load_round_trip(tmp_path):
    parts = build_demo_components(seed=3)
    save_demo_model(parts, tmp_path, DemoModelConfig(), card={"note": "test"}, dtype=torch.float32)
    loaded = load_demo_components(tmp_path)
    for name, value in parts.unet.state_dict().items():
        assert torch.equal(value, loaded.unet.state_dict()[name]), name
    assert load_demo_card(tmp_path)["note"] == "test"
    assert loaded.tokenizer.vocabulary == parts.tokenizer.vocabulary


def test_loading_refuses_mismatched_weights(tmp_path):
    small = replace(DemoModelConfig(), block_out_channels=(32, 64, 96))
    save_demo_model(build_demo_components(small), tmp_path, DemoModelConfig())  # card says 48 wide
    with pytest.raises(ValueError, match="wrong shapes"):
        load_demo_components(tmp_path)
    with pytest.raises(FileNotFoundError, match="pretrain_demo"):
        load_demo_components(tmp_path / "nowhere")


def test_learning_rate_schedule():
    config = PretrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, final_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1) and learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 99) == pytest.approx(0.1, abs=1e-3)


def test_pretraining_smoke_and_exact_resume(tmp_path):
    straight = build_demo_components(seed=0)
    result, _ = pretrain(SMOKE, straight, tmp_path / "a", log=lambda _: None)
    assert result.step == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    resumed = build_demo_components(seed=0)
    pretrain(replace(SMOKE, steps=2), resumed, tmp_path / "b", log=lambda _: None)
    again = build_demo_components(seed=5)  # the checkpoint, not the init, decides
    result, ema = pretrain(SMOKE, again, tmp_path / "b", log=lambda _: None)
    assert result.step == 4 and not again.unet.training
    for name, value in straight.unet.state_dict().items():
        assert torch.allclose(value, again.unet.state_dict()[name], atol=1e-6), name
    ema.copy_to_model()
    with pytest.raises(ValueError, match="different settings"):
        pretrain(replace(SMOKE, learning_rate=0.5), build_demo_components(), tmp_path / "b", log=lambda _: None)


def test_shipped_model_follows_held_in_prompts():
    assert shipped_weights_path().stat().st_size <= 20_000_000
    card = load_demo_card()
    assert set(card["accuracy"]) == {"heldin", "heldout"}
    components = load_demo_components()
    prompts = world.captions("train")[::6]  # 12 held-in captions, every attribute value
    sampler = replace(SamplerConfig(**card["sampler"]), steps=FAST_STEPS)
    images = sample_world(components, prompts, sampler, seed=0)
    accuracy = attribute_accuracy(images, prompts)
    # chance: count 1/3, colour 1/4, shape 1/3, background 1/3
    assert accuracy["colour"] >= 0.75 and accuracy["background"] >= 0.75 and accuracy["reward"] >= 0.6, accuracy


FAST_STEPS = 25  # sampling steps in the shipped-model test


def test_schedule_hides_the_background_at_the_last_timestep(fresh):
    from instructbooth.components import make_noise_scheduler
    from instructbooth.demo.evaluate import background_leak

    assert background_leak(make_noise_scheduler(), count=300) > 0.8  # SD1.5's x_999 shows the background
    assert background_leak(fresh.scheduler, count=300) < 0.5  # zero terminal SNR: chance is 1/3
