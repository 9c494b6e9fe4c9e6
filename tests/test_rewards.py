"""The reward interface, the cheap rewards, the registry and best-of-N."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from instructbooth.rewards import (
    BrightnessReward,
    ImageReward,
    ImageRewardConfig,
    RewardFn,
    TargetColorReward,
    TextConfig,
    VisionConfig,
    best_of_n,
    known_rewards,
    load_reward,
    random_image_reward_model,
    register_reward,
    reward_from_function,
)


def solid(*colours: tuple[float, float, float], size: int = 8) -> torch.Tensor:
    """[B, 3, size, size] images, one solid colour each."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, size, size).clone()


@pytest.fixture(scope="module")
def small_image_reward() -> ImageReward:
    config = ImageRewardConfig(
        vision=VisionConfig(image_size=32, patch_size=16, width=32, depth=1, heads=2, mlp_width=64),
        text=TextConfig(width=32, depth=1, heads=2, mlp_width=64, encoder_width=32, max_positions=40),
        head_widths=(8, 1),
    )
    return ImageReward(random_image_reward_model(config, seed=0))


# --- interface -----------------------------------------------------------------------------


def test_every_reward_follows_the_protocol(small_image_reward):
    images = torch.rand(3, 3, 40, 24)
    prompts, metadata = ["a", "b", ""], [{}, {"seed": 1}, {}]
    rewards = [BrightnessReward(), TargetColorReward(), reward_from_function(lambda i, p, m: i.mean((1, 2, 3))),
               small_image_reward]
    for reward in rewards:
        assert isinstance(reward, RewardFn)
        scores = reward(images, prompts, metadata)
        assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_inputs_that_do_not_fit_the_interface_are_named():
    reward = BrightnessReward()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(2, 8, 8, 3), ["a", "b"], None)
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(torch.rand(2, 3, 8, 8), ["a"], None)
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(torch.rand(2, 3, 8, 8), "ab", None)
    with pytest.raises(ValueError, match="metadata"):
        reward(torch.rand(2, 3, 8, 8), ["a", "b"], [{}])


# --- cheap rewards ---------------------------------------------------------------------------


def test_brightness_is_mean_rec709_luminance():
    images = solid((0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0.5, 0.5, 0.5))
    scores = BrightnessReward()(images, [""] * 5, None)
    assert torch.allclose(scores, torch.tensor([0.0, 1.0, 0.2126, 0.7152, 0.5]), atol=1e-6)
    half = torch.zeros(1, 3, 4, 4)
    half[..., :2] = 1.0  # left half white
    assert BrightnessReward()(half, [""], None).item() == pytest.approx(0.5)


def test_target_color_is_one_minus_scaled_distance_of_the_mean_colour():
    reward = TargetColorReward(target=(1.0, 0.0, 0.0))
    scores = reward(solid((1, 0, 0), (0, 1, 1), (0, 0, 0), (1, 0.3, 0.4)), [""] * 4, None)
    assert torch.allclose(scores, torch.tensor([1.0, 0.0, 1 - 1 / 3**0.5, 1 - 0.5 / 3**0.5]), atol=1e-6)
    with pytest.raises(ValueError, match="three numbers"):
        TargetColorReward(target=(2.0, 0.0, 0.0))


def test_user_functions_batched_and_per_image():
    images = solid((0.2, 0.2, 0.2), (0.8, 0.8, 0.8))
    batched = reward_from_function(lambda x, prompts, metadata: [len(p) for p in prompts])
    assert batched(images, ["ab", "abcd"], None).tolist() == [2.0, 4.0]
    per_image = reward_from_function(lambda x, prompt, meta: x.mean() + meta.get("bonus", 0), per_image=True)
    assert torch.allclose(per_image(images, ["", ""], [{}, {"bonus": 1}]), torch.tensor([0.2, 1.8]))
    column = reward_from_function(lambda x, p, m: torch.ones(2, 1, dtype=torch.float64))
    assert column(images, ["", ""], None).dtype == torch.float32
    wrong = reward_from_function(lambda x, p, m: torch.zeros(3), name="broken")
    with pytest.raises(ValueError, match=r"broken returned shape \(3,\)"):
        wrong(images, ["", ""], None)
    with pytest.raises(ValueError, match="callable"):
        reward_from_function("not a function")


# --- registry ------------------------------------------------------------------------------


def test_load_reward_by_name_and_argument():
    images = solid((0, 1, 0))
    assert isinstance(load_reward("brightness"), BrightnessReward)
    assert load_reward("Target-Color:0,1,0")(images, [""], None).item() == pytest.approx(1.0)
    assert load_reward("target_color", target=[0, 1, 0]).target == (0, 1, 0)
    assert load_reward(lambda x, p, m: x.mean((1, 2, 3)))(images, [""], None).item() == pytest.approx(1 / 3)
    assert {"brightness", "target_color", "imagereward"} <= set(known_rewards())


def test_unknown_names_and_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown reward 'aesthetic'; known rewards: brightness, clip_i, dino, imagereward, learned, target_color"):
        load_reward("aesthetic")
    with pytest.raises(ValueError, match="r,g,b"):
        load_reward("target_color:red")
    with pytest.raises(ValueError, match="needs its weight file"):
        load_reward("imagereward")
    with pytest.raises(ValueError, match="no ImageReward weights"):
        load_reward("imagereward:/nowhere/ImageReward.pt")


def test_register_reward(monkeypatch):
    from instructbooth.rewards import registry

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # the name goes away after the test
    register_reward("constant_for_test", lambda argument=None: reward_from_function(
        lambda x, p, m: torch.full((len(p),), float(argument or 0))))
    assert load_reward("constant_for_test:3")(solid((0, 0, 0)), [""], None).item() == 3.0
    with pytest.raises(ValueError, match="already registered"):
        register_reward("constant_for_test", lambda argument=None: None)


def test_imagereward_through_the_registry(shared_fixtures):
    folder = shared_fixtures / "imagereward_tiny"
    reward = load_reward(f"imagereward:{folder / 'tiny_imagereward.safetensors'}", config=folder / "config.json",
                         dtype="float32", max_batch_size=2)
    assert isinstance(reward, ImageReward) and reward.max_batch_size == 2
    assert reward(torch.rand(3, 3, 64, 64), ["a", "b", "c"], None).shape == (3,)


# --- best-of-N -----------------------------------------------------------------------------


def test_best_of_n_keeps_the_k_best_sorted():
    images = solid((0.1, 0.1, 0.1), (0.9, 0.9, 0.9), (0.5, 0.5, 0.5), (0.7, 0.7, 0.7))
    best = best_of_n(BrightnessReward(), images, "a photo", k=2)
    assert best.indices.tolist() == [1, 3]
    assert torch.allclose(best.scores, torch.tensor([0.9, 0.7]))
    assert torch.equal(best.images, images[[1, 3]])
    channels_last = best_of_n(BrightnessReward(), images.permute(0, 2, 3, 1), "a photo", k=4)
    assert channels_last.indices.tolist() == [1, 3, 2, 0] and channels_last.images.shape == (4, 8, 8, 3)


def test_best_of_n_ties_keep_input_order_and_k_is_checked():
    images = solid((0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (0.5, 0.5, 0.5))
    assert best_of_n(BrightnessReward(), images, "", k=3).indices.tolist() == [0, 2, 1]
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be between 1 and the number of images"):
            best_of_n(BrightnessReward(), images, "", k=k)
    with pytest.raises(ValueError, match="scores tensors only"):
        best_of_n(BrightnessReward(), ["a.png", "b.png"], "", k=1)


def test_best_of_n_with_image_reward_on_files_follows_its_ranking(shared_fixtures):
    import json

    folder = shared_fixtures / "imagereward_tiny"
    expected = json.loads((folder / "expected.json").read_text())
    scorer = ImageReward.load(folder / "tiny_imagereward.safetensors",
                              config=ImageRewardConfig.from_json(folder / "config.json"))
    files = [str(folder / name) for name in expected["images"]]
    best = best_of_n(scorer, files, expected["rank"]["prompt"], k=2)
    places = expected["rank"]["ranks"]
    assert best.images == [files[places.index(1)], files[places.index(2)]]
    assert best.scores[0] >= best.scores[1]
