"""Reward learning from binary feedback (Lee et al. 2023): the loss with exact numbers, perturbed
prompts, a head that separates a separable set, the learned: spec through the reward protocol,
refusals, the reward-train command and the learn / load nodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from instructbooth.feedback import write_feedback
from instructbooth.preference.taxonomy import Taxonomy
from instructbooth.reward_learning import (
    ImageRewardBackbone,
    RewardTrainConfig,
    candidate_prompts,
    label_metrics,
    load_learned_reward,
    prompt_classification_loss,
    read_learned_reward,
    reward_learning_loss,
    save_learned_reward,
    train_reward_head,
)
from instructbooth.reward_learning.learned import sidecar_config
from instructbooth.reward_learning.perturb import word_swaps
from instructbooth.reward_learning.train import check_training_data
from instructbooth.rewards import RewardFn, load_image_reward, load_reward

# --- the loss, by hand ------------------------------------------------------------------------


def test_prompt_classification_loss_matches_hand_computed_values():
    scores = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(prompt_classification_loss(scores)) == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)  # 0.551445
    valid = torch.tensor([[True, True, False]])  # the third prompt does not exist: left out
    assert float(prompt_classification_loss(scores, valid)) == pytest.approx(math.log(1 + 1 / math.e), abs=1e-6)
    assert float(prompt_classification_loss(scores, temperature=0.5)) == pytest.approx(
        math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    two = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # weights pick the first image only
    assert float(prompt_classification_loss(two, weights=torch.tensor([1.0, 0.0]))) == pytest.approx(0.551445, abs=1e-6)


def test_reward_learning_loss_is_mse_plus_lambda_times_prompt_ce():
    scores = torch.tensor([[0.5, 0.0], [0.2, 0.4]])
    labels = torch.tensor([1.0, 0.0])
    mse = ((0.5 - 1) ** 2 + 0.2 ** 2) / 2  # 0.145
    ce_good = math.log(1 + math.exp(-0.5))  # image 0 (good) picks its prompt: 0.474077
    ce_bad = math.log(1 + math.exp(0.2))  # image 1 (bad): 0.798139
    loss, parts = reward_learning_loss(scores, labels, lam=0.5)
    assert float(loss) == pytest.approx(mse + 0.5 * ce_good, abs=1e-6)  # 0.382039
    assert parts == pytest.approx({"mse": mse, "prompt_ce": ce_good}, abs=1e-6)
    loss_all, _ = reward_learning_loss(scores, labels, lam=0.5, aux_on="all")
    assert float(loss_all) == pytest.approx(mse + 0.5 * (ce_good + ce_bad) / 2, abs=1e-6)  # 0.463054
    assert float(reward_learning_loss(scores, labels, lam=0.0)[0]) == pytest.approx(mse, abs=1e-7)


def test_label_metrics_by_hand():
    metrics = label_metrics(torch.tensor([0.1, 0.9, 0.6, 0.3]), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert metrics["accuracy"] == 0.5 and metrics["balanced_accuracy"] == 0.5
    assert metrics["auc"] == 0.75  # 3 of the 4 good-bad pairs in order
    assert metrics["brier"] == pytest.approx((0.01 + 0.01 + 0.36 + 0.49) / 4)
    # bins 1, 9, 6, 3 hold one image each: |0-.1| + |1-.9| + |0-.6| + |1-.3|, each weighted 1/4
    assert metrics["ece"] == pytest.approx((0.1 + 0.1 + 0.6 + 0.7) / 4)


# --- perturbed prompts ------------------------------------------------------------------------


def test_word_swaps_change_exactly_one_count_colour_or_background_word():
    prompt = "two red circles on a black background"
    swaps = word_swaps(prompt)
    assert {"three red circles on a black background", "two blue circles on a black background",
            "two red circles on a white background"} <= set(swaps)
    assert prompt not in swaps and len(swaps) == len(set(swaps))
    for swap in swaps:
        assert sum(a != b for a, b in zip(swap.split(), prompt.split())) == 1
    assert "two red circles on a _____ background" not in " ".join(swaps)


def test_candidates_put_the_true_prompt_first_and_use_taxonomy_edits():
    prompt = "sks plushie holding a red umbrella"  # a template of the shipped taxonomy
    [row] = candidate_prompts([prompt], 40, seed=0, taxonomy=Taxonomy.default())
    assert row[0] == prompt and "sks plushie holding a red balloon" in row
    assert "sks plushie holding a blue umbrella" in row
    assert candidate_prompts([prompt], 4, seed=3) == candidate_prompts([prompt], 4, seed=3)
    assert len(candidate_prompts([prompt], 4, seed=3)[0]) == 4
    assert candidate_prompts(["a cat"], 4) == [["a cat"]]  # nothing to swap: fewer candidates


# --- a learned reward on the tiny ImageReward -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights(shared_fixtures):
    return shared_fixtures / "imagereward_tiny" / "tiny_imagereward.safetensors"


@pytest.fixture(scope="module")
def backbone(tiny_weights):
    torch.set_num_threads(1)
    return ImageRewardBackbone(load_image_reward(tiny_weights, sidecar_config(tiny_weights)), tiny_weights)


def separable_images(count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright noisy pictures are good, dark ones bad."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 32, 32, generator=generator) * 0.3
    labels = (torch.arange(count) % 2).float()
    images[labels == 1] += 0.7
    return images, labels


@pytest.fixture(scope="module")
def trained(backbone):
    images, labels = separable_images()
    candidates = candidate_prompts(["a red ball on a white background"] * len(images), 3)
    features, valid = backbone.pair_features(images, candidates)
    config = RewardTrainConfig(epochs=80, batch_size=8, validation_fraction=0.25, num_prompts=3)
    return train_reward_head(features, valid, labels, config), config, images, labels


def test_pair_features_are_imagereward_token0_features(backbone):
    images = separable_images(2)[0]
    features, valid = backbone.pair_features(images, [["a red ball", "a blue ball"], ["a red ball"]])
    assert features.shape == (2, 2, 32) and valid.tolist() == [[True, True], [True, False]]
    scorer = backbone.scorer  # the model's own head on these features gives its own scores
    own = scorer.model.scores_from_features(features[:, 0])
    assert torch.allclose(own, scorer.score(images, "a red ball", layout="BCHW"), atol=1e-5)


def test_learned_head_separates_a_separable_set(trained):
    result = trained[0]
    assert result.metrics["train"]["accuracy"] == 1.0
    assert result.metrics["validation"]["accuracy"] == 1.0 and result.metrics["validation"]["auc"] == 1.0
    assert result.metrics["validation"]["count"] == 4.0  # a stratified quarter: 2 good, 2 bad
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_learned_spec_loads_and_scores_through_the_reward_protocol(trained, backbone, tmp_path):
    result, config, images, labels = trained
    path = save_learned_reward(tmp_path / "learned.safetensors", result.head, backbone, config, result.metrics)
    _, metadata = read_learned_reward(path)
    assert metadata["format"] == "instructbooth.learned_reward/1"
    assert metadata["backbone_identity"] == backbone.identity and metadata["backbone_kind"] == "imagereward"
    assert (metadata["feature_size"], metadata["lambda"], metadata["num_prompts"]) == ("32", "0.5", "3")
    assert json.loads(metadata["metrics"])["validation"]["accuracy"] == 1.0

    reward = load_reward(f"learned:{path}")  # the backbone is found from the file's metadata
    assert isinstance(reward, RewardFn)
    scores = reward(images, ["a red ball on a white background"] * len(images), [{}] * len(images))
    assert scores.dtype == torch.float32 and scores.shape == (len(images),)
    assert float(scores[labels == 1].min()) > float(scores[labels == 0].max())
    assert torch.allclose(reward.score(images.permute(0, 2, 3, 1), "a red ball on a white background"), scores)
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(images, ["a"], None)


def test_refusals_name_the_problem(trained, backbone, tmp_path, tiny_weights):
    features, valid = torch.zeros(4, 2, 32), torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="no labelled images"):
        check_training_data(features[:0], valid[:0], torch.zeros(0))
    with pytest.raises(ValueError, match="all 4 labelled images are good"):
        check_training_data(features, valid, torch.ones(4))
    with pytest.raises(ValueError, match="mismatched feature sizes: the head takes 768 features, the backbone gives 32"):
        check_training_data(features, valid, torch.tensor([0.0, 1, 0, 1]), feature_size=768)

    result, config = trained[:2]
    path = save_learned_reward(tmp_path / "learned.safetensors", result.head, backbone, config)
    other = load_image_reward(tiny_weights, sidecar_config(tiny_weights))
    with torch.no_grad():
        other.model.head.layers[0].weight.add_(0.01)  # a fine-tuned backbone: other features
    with pytest.raises(ValueError, match="was trained on backbone imagereward:"):
        load_learned_reward(path, backbone=other)
    (tmp_path / "plain.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is not a learned reward"):
        load_reward(f"learned:{tmp_path / 'plain.safetensors'}")


# --- the command and the nodes ----------------------------------------------------------------


def _feedback_folder(root, labels):
    images = separable_images(len(labels))[0]
    write_feedback(root, images, "a red ball on a white background", labels)
    return root


def test_reward_train_refuses_one_class_before_loading_anything(tmp_path, capsys):
    from instructbooth.cli import main

    folder = _feedback_folder(tmp_path / "fb", [True, True, True])
    code = main(["reward-train", "--feedback", str(folder), "--imagereward", str(tmp_path / "absent.pt"),
                 "--output", str(tmp_path / "r.safetensors")])
    assert code == 1
    assert "all 3 labelled images are good" in capsys.readouterr().err
    code = main(["reward-train", "--feedback", str(tmp_path / "nothing"), "--imagereward", "x.pt", "--output", "r.safetensors"])
    assert code == 1 and "does not exist" in capsys.readouterr().err


def test_reward_train_command_writes_the_reward_and_its_metrics(tmp_path, tiny_weights, capsys):
    from instructbooth.cli import main

    folder = _feedback_folder(tmp_path / "fb", [bool(i % 2) for i in range(12)])
    output = tmp_path / "learned.safetensors"
    code = main(["reward-train", "--feedback", str(folder), "--imagereward", str(tiny_weights), "--output", str(output),
                 "--epochs", "60", "--batch-size", "8", "--validation-fraction", "0.34", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    assert code == 0 and "validation: count 4" in printed and f"learned:{output}" in printed
    report = json.loads((tmp_path / "learned_metrics.json").read_text())
    assert set(report["metrics"]) == {"train", "validation"} and report["good"] == 6
    assert {"accuracy", "balanced_accuracy", "auc", "brier", "ece"} <= set(report["metrics"]["validation"])
    assert report["metrics"]["validation"]["accuracy"] == 1.0
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 1
    assert read_learned_reward(output)[1]["backbone_file"] == str(tiny_weights.resolve())


def test_learn_and_load_nodes_give_an_image_reward_the_score_node_takes(tmp_path_factory, tiny_weights):
    from nodes_harness import loaded_pack, pack_module

    with loaded_pack(tmp_path_factory.mktemp("comfy_root")) as _:
        import folder_paths

        feedback_nodes = pack_module("nodes.feedback_nodes")
        reward_nodes = pack_module("nodes.reward_nodes")
        rewards = pack_module("instructbooth.rewards")
        scorer = rewards.load_image_reward(tiny_weights, str(sidecar_config(tiny_weights)))
        images, labels = separable_images(12)
        bhwc = images.clamp(0, 1).permute(0, 2, 3, 1)
        marks = "".join("g" if label else "b" for label in labels.tolist())
        feedback_nodes.SaveFeedback.execute(bhwc, "a red ball", marks, "fb")
        items = feedback_nodes.LoadFeedback.execute("fb")[0]
        with torch.inference_mode():  # as ComfyUI runs every node
            learned, report = feedback_nodes.LearnReward.execute(items, scorer, "mine", 0.5, 3, 60, 0.34, 0)[:2]
        assert "validation: count 4" in report
        saved = f"{folder_paths.get_output_directory()}/instructbooth/learned_rewards/mine.safetensors"
        assert read_learned_reward(saved)[1]["num_prompts"] == "3"
        scores = reward_nodes.ImageRewardScore.execute(learned, bhwc, "a red ball")[0]
        assert min(s for s, g in zip(scores, labels) if g) > max(s for s, g in zip(scores, labels) if not g)
        loaded = feedback_nodes.LearnedRewardLoader.execute(scorer, "mine")[0]
        assert loaded.score(bhwc, "a red ball").tolist() == pytest.approx(scores, abs=1e-6)
        with pytest.raises(ValueError, match="needs the ImageReward model itself"):
            feedback_nodes.LearnReward.execute(items, learned, "x", 0.5, 3, 2, 0.2, 0)


def test_demo_backbone_features_and_a_demo_learned_reward_load_by_spec(tmp_path):
    from instructbooth.demo.reward_features import DemoBackbone
    from instructbooth.demo.world import draw_scene, parse_caption

    backbone = DemoBackbone.shipped()
    assert (backbone.image_feature_size, backbone.feature_size) == (176, 240)
    generator = np.random.default_rng(0)
    prompts = ["two red circles on a black background", "one blue square on a white background"] * 4
    right = torch.from_numpy(np.stack([draw_scene(parse_caption(p), generator) for p in prompts]))
    wrong = torch.from_numpy(np.stack([draw_scene(parse_caption(p.replace("red", "green").replace("blue", "yellow")),
                                                  generator) for p in prompts]))
    images, labels = torch.cat([right, wrong]), torch.tensor([1.0] * 8 + [0.0] * 8)
    candidates = [[p, p.replace("two", "three")] for p in prompts * 2]
    features, valid = backbone.pair_features(images, candidates)
    assert features.shape == (16, 2, 240)
    assert torch.equal(features[0, 0, :176], features[0, 1, :176])  # one image feature for both prompts
    config = RewardTrainConfig(epochs=60, batch_size=8, validation_fraction=0.0, num_prompts=2)
    result = train_reward_head(features, valid, labels, config, backbone.image_feature_size)
    path = save_learned_reward(tmp_path / "demo.safetensors", result.head, backbone, config, result.metrics)
    reward = load_reward(f"learned:{path}")  # kind "demo": the shipped demo model is the backbone
    scores = reward(images, prompts * 2, None)
    assert float(scores[:8].min()) > float(scores[8:].max())
