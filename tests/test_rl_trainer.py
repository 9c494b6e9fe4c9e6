"""train_rl end to end on the tiny model (CPU): the reward rises, RWR lowers its weighted
loss, resume is bit-exact, the callback and the subject guard stop cleanly, and the
result is one LoRA file that reproduces the tuned model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from instructbooth.components import tiny_components
from instructbooth.lora import UNET_ALL_TARGETS, LoraConfig, apply_lora, inject_lora, lora_state_dict
from instructbooth.lora import LoraLinear
from instructbooth.prompts import RLPrompts, Subject
from instructbooth.rl.config import RLConfig
from instructbooth.rl.trainer import train_rl
from instructbooth.training import StopTraining

PLUSHIE = Subject("sks", "plushie")
PROMPTS = RLPrompts(("{subject} riding a bicycle", "{subject} swimming", "{subject} reading"), PLUSHIE,
                    ("{subject} baking", "{subject} on the moon", "{subject} dancing", "{subject} painting"))
SMALL = dict(sample_steps=4, guidance=2.0, height=16, width=16, sample_batch_size=4, sample_batches=2, epochs=3,
             train_batch_size=4, learning_rate=3e-2, clip_range=1e-2, advantage="tracker", tracker_min_count=2,
             heldout_every=2, heldout_seeds=1, kl_weight=0.1, identifier_ratio=0.5, images_per_prompt=1,
             gradient_accumulation_steps=1, timestep_window=1.0)


def brightness(images, prompts, metadata):
    """Stand-in for rewards.simple.BrightnessReward: mean pixel value [B]."""
    assert len(prompts) == len(metadata) == images.shape[0]
    return images.mean(dim=(1, 2, 3))


def personalized_lora(seed: int = 5, targets: tuple[str, ...] = LoraConfig().unet_targets) -> dict:
    """A stand-in personalized LoRA: random up and down weights (rank 2) on the tiny UNet."""
    parts = tiny_components(0)
    params = inject_lora(parts, LoraConfig(rank=2, alpha=2.0, unet_targets=targets), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return lora_state_dict(parts)


def unet_output(components, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return components.unet(x, 400, encoder_hidden_states=cond).sample


# Measured over RL seeds 0-7 (tiny_components(0), 5 epochs of 64 samples = 8 prompts x 8 images, group
# advantages, 8 DDIM steps, brightness): the held-out reward (4 prompts x 8 fixed seeds, before vs after)
# rose by 0.0113 to 0.0228, mean 0.0182 (seed 1: 0.0204); one image's reward has a std of about 0.005.
# We assert half of the smallest rise.
RISE_MEASURED_MIN = 0.0113


def test_brightness_reward_rises_on_fixed_prompts():
    config = RLConfig(sample_steps=8, guidance=1.0, height=16, width=16, sample_batch_size=64, sample_batches=1,
                      epochs=5, train_batch_size=64, learning_rate=5e-2, heldout_every=5, heldout_seeds=8,
                      advantage="group", images_per_prompt=8, gradient_accumulation_steps=1, timestep_fraction=0.5,
                      seed=1)
    result = train_rl(tiny_components(0), brightness, PROMPTS, config)
    before, after = result.metrics[0]["reward"]["heldout"]["mean"], result.final_heldout["mean"]
    assert after - before > RISE_MEASURED_MIN / 2, f"held-out reward went from {before:.4f} to {after:.4f}"
    curve = [entry["reward"]["all"]["mean"] for entry in result.metrics]
    assert curve[-1] > curve[0]
    assert result.stop_reason == "finished" and result.epochs_done == 5


def test_rwr_lowers_its_weighted_loss_on_fixed_samples():
    from instructbooth.rl.config import RLConfig as Config
    from instructbooth.rl.distributed import Processes
    from instructbooth.rl.policy import Policy
    from instructbooth.rl.rwr import reward_weights
    from instructbooth.rl.updates import Regulariser, rwr_update
    from instructbooth.rl.context import RunContext
    from instructbooth.sampling import PromptEmbeddingCache, SamplerSettings, ddim_schedule, sample_trajectories
    from instructbooth.encoding import decode_latents
    from instructbooth.training import Precision

    components = tiny_components(0)
    config = Config(method="rwr", sample_steps=4, guidance=1.0, height=16, width=16, learning_rate=1e-2,
                    rwr_beta=0.5, sample_batch_size=8, sample_batches=1, train_batch_size=8,
                    gradient_accumulation_steps=1)
    policy = Policy.prepare(components, config, None)
    subject = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = RunContext(components, policy, config, PROMPTS, brightness, Processes(), Precision.create("no", "cpu"),
                     ddim_schedule(components.scheduler, 4), PromptEmbeddingCache(components))
    regulariser = Regulariser(subject, ("a photo of sks plushie",) * 3)
    prompts = [d.text for d in PROMPTS.draw(8, 0.5, torch.Generator().manual_seed(0))]
    samples = sample_trajectories(components, prompts, list(range(8)), SamplerSettings(4, 1.0, 1.0, 16, 16))
    weights = reward_weights(brightness(decode_latents(components, samples.final_latents), prompts, [{}] * 8),
                             temperature=0.002)
    optimizer = torch.optim.Adam(policy.params, lr=3e-2)
    history = []
    for _ in range(15):
        optimizer.zero_grad()
        history.append(rwr_update(ctx, samples, torch.arange(8), weights, (0, 0, 0), regulariser=regulariser))  # same noise
        optimizer.step()
    policy.release()
    first, last = history[0], history[-1]
    # measured: 1.078 -> 0.931 in 15 steps (falling at every step); assert half of that drop
    assert last.weighted < first.weighted - 0.07, [round(h.weighted, 4) for h in history]
    assert last.loss < first.loss and first.prior > 0
    assert weights.max() > 2 * weights.min()  # the weights do prefer some samples


def test_resume_is_bit_exact_and_callback_stops_at_last_checkpoint(tmp_path):
    config = RLConfig(**SMALL)
    base = personalized_lora()
    full = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path / "full", base_lora=base)

    def stop_in_second_epoch(report):
        return report.step < 3  # epoch 1 takes steps 1-2; returning False at step 3 stops

    stopped = train_rl(tiny_components(0), brightness, PROMPTS, config, callback=stop_in_second_epoch,
                       checkpoint_dir=tmp_path / "split", base_lora=base)
    assert stopped.stop_reason == "callback" and stopped.epochs_done == 1
    checkpoint = torch.load(stopped.last_checkpoint, weights_only=True)
    assert checkpoint["step"] == 1
    for key, value in checkpoint["trainable"].items():
        assert torch.equal(stopped.trained_state[key], value)

    resumed = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path / "split",
                       base_lora=base)
    assert resumed.epochs_done == 3 and resumed.trained_state.keys() == full.trained_state.keys()
    for key in full.trained_state:
        assert torch.equal(resumed.trained_state[key], full.trained_state[key]), key
    strip = lambda history: [{k: v for k, v in e.items() if k != "time"} for e in history]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)
    assert resumed.prompt_stats == full.prompt_stats
    assert full.metrics[-1]["kl_penalty"] > 0 and full.metrics[-1]["clip_fraction"] >= 0

    with pytest.raises(ValueError, match="different settings.*learning_rate"):
        train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**{**SMALL, "learning_rate": 1e-3}),
                 checkpoint_dir=tmp_path / "split", base_lora=base)


def test_one_file_lora_reproduces_the_tuned_model_and_components_come_back(tmp_path):
    base = personalized_lora()
    components = tiny_components(0)
    original = unet_output(components)
    config = RLConfig(**{**SMALL, "epochs": 1, "heldout_every": 0})
    result = train_rl(components, brightness, PROMPTS, config, checkpoint_dir=tmp_path, base_lora=base)

    assert not any(isinstance(m, LoraLinear) for m in components.unet.modules())
    torch.testing.assert_close(unet_output(components), original, atol=1e-5, rtol=1e-5)

    tuned = tiny_components(0)  # the model as trained: personalized merged, then the RL LoRA
    apply_lora(tuned, base)
    apply_lora(tuned, result.trained_state)
    one_file = tiny_components(0)  # what ComfyUI does with the single file
    apply_lora(one_file, result.lora_state)
    torch.testing.assert_close(unet_output(one_file), unet_output(tuned), atol=1e-5, rtol=1e-5)
    assert (unet_output(one_file) - unet_output(tiny_components(0))).abs().max() > 1e-4
    ranks = {v.shape[0] for k, v in result.lora_state.items() if k.endswith("lora_down.weight")}
    assert ranks == {2 + config.lora_rank}
    assert result.metadata.method == "ddpo" and result.metadata.trigger_phrase == "sks plushie"

    saved = json.loads((tmp_path / "metrics.json").read_text())
    entry = saved["epochs"][0]
    assert {"all", "identifier", "plain"} <= set(entry["reward"])
    assert {"sample", "reward", "train", "eval", "total"} == set(entry["time"])
    for key in ("clip_fraction", "approx_kl", "kl_penalty", "loss"):
        assert key in entry
    with Image.open(tmp_path / "reward_curve.png") as curve:
        assert curve.size == (720, 420)


def test_subject_guard_rolls_back_one_epoch(tmp_path):
    calls = []

    def subject_measure(images, prompts, metadata):
        calls.append(len(prompts))
        epoch = (len(calls) - 1) // 2  # two sampling batches per epoch
        return torch.full((len(prompts),), 1.0 if epoch < 2 else 0.1)

    config = RLConfig(**{**SMALL, "epochs": 5, "heldout_every": 0, "subject_threshold": 0.5})
    result = train_rl(tiny_components(0), brightness, PROMPTS, config, checkpoint_dir=tmp_path,
                      subject_measure=subject_measure)
    assert result.stop_reason == "subject_guard"
    assert result.epochs_done == 2 and result.metrics[-1]["stopped"] == "subject_guard"
    assert result.metrics[0]["subject_measure"] == pytest.approx(1.0)
    first_epoch = torch.load(tmp_path / "checkpoint-0000001.pt", weights_only=True)["trainable"]
    for key, value in first_epoch.items():  # samples of the model after 2 epochs failed: back to epoch 1
        assert torch.equal(result.trained_state[key], value)


def test_rwr_run_and_continue_mode():
    base = personalized_lora()
    subject = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = RLConfig(**{**SMALL, "method": "rwr", "kl_weight": 0.0, "epochs": 2, "heldout_every": 0,
                         "continue_base_lora": True})
    result = train_rl(tiny_components(0), brightness, PROMPTS, config, base_lora=base, subject_images=subject)
    assert result.lora_state.keys() == base.keys()  # continued: same modules and rank
    changed = max((result.lora_state[k] - base[k]).abs().max().item() for k in base)
    assert changed > 0
    entry = result.metrics[-1]
    assert entry["prior"] > 0 and entry["weighted"] > 0 and "clip_fraction" not in entry
    with pytest.raises(ValueError, match="needs subject_images"):
        train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(method="rwr"))


def test_continue_mode_trains_an_all_layer_lora():
    """A personalized LoRA on every Linear and Conv2d (ResNet, in/out and resampling convs
    included) is continued as it is: same modules, same shapes, and the convs change too."""
    base = personalized_lora(targets=UNET_ALL_TARGETS)
    assert any(k.endswith("_conv1.lora_down.weight") for k in base)
    config = RLConfig(**{**SMALL, "epochs": 1, "heldout_every": 0, "kl_weight": 0.0, "continue_base_lora": True})
    result = train_rl(tiny_components(0), brightness, PROMPTS, config, base_lora=base)
    assert result.lora_state.keys() == base.keys()
    assert all(result.lora_state[k].shape == base[k].shape for k in base)
    conv = [k for k in base if k.endswith("_conv_in.lora_up.weight") or k.endswith("_conv1.lora_up.weight")]
    assert conv and all(not torch.equal(result.lora_state[k], base[k]) for k in conv)


def test_images_per_prompt_samples_each_prompt_in_a_row():
    seen = []

    def recording(images, prompts, metadata):
        seen.extend((m["prompt"], m["group"], m["seed"]) for m in metadata)
        return brightness(images, prompts, metadata)

    config = RLConfig(**{**SMALL, "epochs": 1, "heldout_every": 0, "sample_batch_size": 8, "train_batch_size": 8,
                         "images_per_prompt": 4, "advantage": "group"})
    train_rl(tiny_components(0), recording, PROMPTS, config)
    groups = [seen[i:i + 4] for i in range(0, len(seen), 4)]
    assert len(seen) == 16 and len(groups) == 4
    for group in groups:
        assert len({(text, kind) for text, kind, _ in group}) == 1  # one prompt, one kind per group
        assert len({seed for _, _, seed in group}) == 4  # four different images of it
    assert sorted(group[0][1] for group in groups) == ["identifier", "identifier", "plain", "plain"]
    with pytest.raises(ValueError, match="images_per_prompt 3 must be >= 1 and divide sample_batch_size 8"):
        RLConfig(**{**SMALL, "sample_batch_size": 8, "images_per_prompt": 3})


def test_timestep_window_trains_only_the_early_steps(monkeypatch):
    import instructbooth.rl.algorithms as algorithms

    picked = []
    real_update = algorithms.ddpo_update

    def spy(ctx, samples, rows, step_index, advantages, identifier, scale, backward=None):
        picked.append(step_index.clone())
        return real_update(ctx, samples, rows, step_index, advantages, identifier, scale)

    monkeypatch.setattr(algorithms, "ddpo_update", spy)
    config = RLConfig(**{**SMALL, "sample_steps": 10, "epochs": 1, "heldout_every": 0, "timestep_window": 0.7,
                         "timestep_fraction": 0.5})
    assert (config.window_steps, config.train_timesteps) == (7, 4)
    train_rl(tiny_components(0), brightness, PROMPTS, config)
    steps = torch.cat(picked)
    assert steps.shape[1] == 4 and int(steps.max()) <= 6  # never the last three steps
    assert len(set(steps.flatten().tolist())) == 7  # but every step of the window
    with pytest.raises(ValueError, match="timestep_window must be in"):
        RLConfig(timestep_window=0.0)


def test_nan_weights_are_named_before_training():
    components = tiny_components(0)
    with torch.no_grad():
        components.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the base model holds NaN or inf weights \(conv_in.weight\)"):
        train_rl(components, brightness, PROMPTS, RLConfig(**SMALL))
    base = {k: torch.full_like(v, float("inf")) for k, v in personalized_lora().items()}
    with pytest.raises(ValueError, match="the personalized LoRA holds NaN or inf"):
        train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**SMALL), base_lora=base)


def test_non_finite_reward_stops_without_saving(tmp_path):
    def broken(images, prompts, metadata):
        return torch.full((images.shape[0],), float("nan"))

    config = RLConfig(**{**SMALL, "epochs": 1, "heldout_every": 0})
    with pytest.raises(ValueError, match="the reward returned NaN or inf for 4 of 4 images.*nothing was trained"):
        train_rl(tiny_components(0), broken, PROMPTS, config, checkpoint_dir=tmp_path)
    assert not list(tmp_path.glob("checkpoint-*.pt"))


def test_stop_training_exception_and_config_errors():
    def cancel(report):
        raise StopTraining

    result = train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**{**SMALL, "heldout_every": 0}),
                      callback=cancel)
    assert result.stop_reason == "callback" and result.epochs_done == 0
    assert all(v.abs().max() == 0 for k, v in result.trained_state.items() if "lora_up" in k)
    with pytest.raises(ValueError, match="eta must be > 0"):
        RLConfig(eta=0.0)
    with pytest.raises(ValueError, match=r"train_batch_size x gradient_accumulation_steps \(3 x 1 = 3 samples per "
                       r"update\) must divide the samples per epoch per process \(1 x 4 = 4\)"):
        RLConfig(sample_batch_size=4, sample_batches=1, train_batch_size=3, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="method must be one of"):
        RLConfig(method="ppo")


def test_rl_command_writes_one_lora_and_metrics(tmp_path):
    from instructbooth.cli import main
    from instructbooth.lora import load_lora

    prompts = tmp_path / "mine.txt"
    prompts.write_text("{subject} riding a bicycle\n{subject} swimming  # comment\n", encoding="utf-8")
    output = tmp_path / "rl.safetensors"
    argv = ["rl", "--random-model", "tiny", "--reward", "brightness", "--identifier", "sks", "--class-noun", "plushie",
            "--prompts", str(prompts), "--heldout", "none", "--output", str(output), "--sample-steps", "3",
            "--height", "16", "--width", "16", "--sample-batch-size", "4", "--sample-batches", "1",
            "--train-batch-size", "4", "--gradient-accumulation-steps", "1", "--epochs", "2", "--adv-clip", "none", "--reward-plain-prompt", "no"]
    assert main(argv) == 0
    state, metadata = load_lora(output)
    assert metadata.method == "ddpo" and metadata.trigger_phrase == "sks plushie"
    assert metadata.training_config["rl"]["adv_clip"] is None and metadata.training_config["epochs_done"] == 2
    assert any(k.endswith("lora_down.weight") for k in state)
    history = json.loads((tmp_path / "rl_metrics" / "metrics.json").read_text())["epochs"]
    assert len(history) == 2 and "heldout" not in history[0]["reward"]
    assert main(["rl", "--random-model", "tiny", "--reward", "brightness", "--output", str(output)]) == 1  # no subject


def test_starting_over_removes_the_old_runs_metrics(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 7}]}))
    (tmp_path / "reward_curve.png").write_bytes(b"old")
    seen = []

    def cancel_at_first_step(report):
        seen.append((tmp_path / "metrics.json").exists() or (tmp_path / "reward_curve.png").exists())
        raise StopTraining

    config = RLConfig(**{**SMALL, "heldout_every": 0})
    result = train_rl(tiny_components(0), brightness, PROMPTS, config, callback=cancel_at_first_step,
                      checkpoint_dir=tmp_path, resume=False)
    assert result.epochs_done == 0 and seen == [False]
    saved = tmp_path / "metrics.json"
    assert not saved.exists() or json.loads(saved.read_text())["epochs"] == []
