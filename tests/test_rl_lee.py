"""Reward-weighted fine-tuning as Lee et al. 2023 publish it (method "lee"): weights are the reward
itself, one offline round of samples, beta on regulariser data of its own."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from instructbooth.components import tiny_components
from instructbooth.prompts import RLPrompts, Subject
from instructbooth.rl import collect, offline
from instructbooth.rl.config import RLConfig
from instructbooth.rl.rwr import reward_weights
from instructbooth.rl.trainer import train_rl

PROMPTS = RLPrompts(("{subject} riding a bicycle", "{subject} swimming"), Subject("sks", "plushie"))
LEE = dict(method="lee", sample_steps=3, guidance=1.0, height=16, width=16, learning_rate=3e-2, heldout_every=0,
           sample_batch_size=4, sample_batches=1, images_per_prompt=2, train_batch_size=2,
           gradient_accumulation_steps=2, epochs=3)


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))


def test_lee_weights_are_the_reward_itself_clamped_and_not_renormalised():
    rewards = torch.tensor([0.9, 0.1, -0.3, 0.5])
    torch.testing.assert_close(reward_weights(rewards, "reward"), torch.tensor([0.9, 0.1, 0.0, 0.5]))
    assert float(reward_weights(rewards, "exp").mean()) == pytest.approx(1.0)  # the other weightings renormalise
    assert float(reward_weights(rewards, "reward").mean()) == pytest.approx(0.375)


def test_lee_samples_once_and_trains_every_epoch_on_that_round(monkeypatch):
    calls = []
    real = collect.collect_samples

    def counted(ctx, epoch):
        calls.append(epoch)
        return real(ctx, epoch)

    monkeypatch.setattr(offline, "collect_samples", counted)
    result = train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**LEE, rwr_beta=0.0))
    assert calls == [0]  # one offline round
    means = [entry["reward"]["all"]["mean"] for entry in result.metrics]
    assert len(means) == 3 and means[0] == means[1] == means[2]  # the same scored samples every epoch
    losses = [entry["weighted"] for entry in result.metrics]
    assert losses[2] < losses[0]  # the weighted loss on the fixed round falls


def test_lee_resumes_on_the_saved_round_bit_for_bit(tmp_path):
    config = RLConfig(**LEE, rwr_beta=0.0)
    straight = train_rl(tiny_components(0), brightness, PROMPTS, config)
    train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**{**LEE, "epochs": 1}, rwr_beta=0.0),
             checkpoint_dir=tmp_path)
    assert (tmp_path / "offline-samples-0.pt").is_file()
    resumed = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path)
    assert all(torch.equal(straight.lora_state[k], resumed.lora_state[k]) for k in straight.lora_state)
    (tmp_path / "offline-samples-0.pt").unlink()
    with pytest.raises(ValueError, match="offline round of samples.*missing: start over"):
        train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**{**LEE, "epochs": 4}, rwr_beta=0.0),
                 checkpoint_dir=tmp_path)


def test_beta_regulariser_uses_its_own_images_with_their_captions(tmp_path, monkeypatch):
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()).save(
            folder / f"c{i}.png")
    (folder / "c0.txt").write_text("a photo of a plushie on a shelf")
    seen = []
    import instructbooth.rl.updates as updates

    real = updates._prior_batch

    def spy(ctx, regulariser, slots, draw):
        out = real(ctx, regulariser, slots, draw)
        seen.extend(out[3])
        return out

    monkeypatch.setattr(updates, "_prior_batch", spy)
    train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**{**LEE, "epochs": 1}, rwr_beta=0.5),
             regulariser_images=folder)
    assert set(seen) == {"a photo of a plushie on a shelf", "a photo of a plushie"}  # caption, else the class prompt
    with pytest.raises(ValueError, match="needs subject_images .* or regulariser_images"):
        train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**LEE, rwr_beta=0.5))


def test_the_cli_runs_lee_with_a_regulariser_folder(tmp_path):
    from instructbooth.cli import main

    folder = tmp_path / "class"
    folder.mkdir()
    Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()).save(folder / "c.png")
    code = main(["rl", "--random-model", "tiny", "--identifier", "sks", "--class-noun", "plushie", "--reward",
                 "brightness", "--method", "lee", "--height", "32", "--width", "32", "--sample-steps", "2",
                 "--sample-batch-size", "2", "--images-per-prompt", "2", "--sample-batches", "1",
                 "--train-batch-size", "2", "--gradient-accumulation-steps", "1", "--epochs", "2", "--heldout", "none",
                 "--regulariser-images", str(folder), "--rwr-beta", "0.5", "--device", "cpu",
                 "--output", str(tmp_path / "lee.safetensors"), "--checkpoint-dir", str(tmp_path / "ck")])
    assert code == 0
    epochs = json.loads((tmp_path / "ck" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 2 and all(e["prior"] > 0 for e in epochs)
