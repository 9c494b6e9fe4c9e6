"""Personalize and RL Fine-Tune nodes on tiny models, against the ComfyUI stand-ins.

Every node runs inside torch.inference_mode(), as ComfyUI runs nodes. The stand-in MODEL,
CLIP and VAE hold a tiny SD-family checkpoint; ComfyUI has no config for such tiny models,
so the bridge's `architecture_hints` (normally read from ComfyUI's SD15 config) is patched
to the tiny model's hints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nodes_harness import pack_module, reset_records, standin

PROMPTS = "{subject} riding a bicycle\n{subject} reading a book"


@pytest.fixture(scope="module")
def tiny(pack):
    """(LDM state dict, architecture hints) of a tiny seeded SD-family model."""
    components = pack_module("instructbooth.components").tiny_components(seed=0)
    hints = pack_module("instructbooth.checkpoint.architecture").ArchitectureHints.from_components(components)
    return pack_module("instructbooth.checkpoint").ldm_state_dict(components), hints


@pytest.fixture(autouse=True)
def tiny_hints(pack, tiny, monkeypatch):
    monkeypatch.setattr(pack_module("nodes.bridge"), "architecture_hints", lambda model: tiny[1])
    reset_records()
    yield
    reset_records()


@pytest.fixture
def comfy_inputs(tiny):
    return standin("fake_models").comfy_objects(tiny[0])


@pytest.fixture(scope="module")
def photos():
    generator = torch.Generator().manual_seed(3)
    return [torch.rand(2, 40, 48, 3, generator=generator), torch.rand(1, 36, 36, 3, generator=generator)]


@pytest.fixture(scope="module")
def scorer(pack, shared_fixtures):
    rewards = pack_module("instructbooth.rewards")
    folder = shared_fixtures / "imagereward_tiny"
    return rewards.ImageReward.load(folder / "tiny_imagereward.safetensors",
                                    rewards.ImageRewardConfig.from_json(folder / "config.json"))


def personalize_inputs(model, clip, vae, images, **changes) -> dict:
    settings = dict(identifier="sks", class_noun="plushie", description="", lora_name="ib/sks", steps=3,
                    learning_rate=1e-3, lora_rank=2, resolution=32, batch_size=1, train_text_encoder=False,
                    prior_preservation=False, num_class_images=2, mixed_precision="no", gradient_checkpointing=False,
                    seed=0, checkpoint_every=0, preview_every=0, flip=False)
    settings.update(changes)
    # is_input_list node: ComfyUI passes every input as a list
    return {"model": [model], "clip": [clip], "vae": [vae], "images": images, **{k: [v] for k, v in settings.items()}}


def run_personalize(inputs: dict):
    node = pack_module("nodes.personalize_node").Personalize
    with torch.inference_mode():
        return node.execute(**inputs).args


def run_rl(model, clip, vae, scorer, lora, **changes):
    settings = dict(prompts=PROMPTS, identifier="sks", class_noun="plushie", description="", lora_name="ib/rl",
                    identifier_ratio=0.5, use_description=False, method="ddpo", epochs=2, sample_steps=2, guidance=2.0,
                    resolution=32, sample_batch_size=2, sample_batches=1, train_batch_size=2, learning_rate=1e-3,
                    lora_rank=2, kl_weight=0.0, rwr_beta=0.0, mixed_precision="no", gradient_checkpointing=False,
                    seed=0, images_per_prompt=2, gradient_accumulation_steps=1)
    settings.update(changes)
    node = pack_module("nodes.rl_node").RLFineTune
    with torch.inference_mode():
        return node.execute(model=model, clip=clip, vae=vae, image_reward=scorer, lora=lora, **settings).args


def run_folder(name_part: str):
    import folder_paths

    found = sorted((pack_module("nodes.bridge").Path(folder_paths.get_output_directory()) / "instructbooth").glob(
        f"*{name_part}-*"))
    assert len(found) == 1, found
    return found[0]


def lora_file(name: str):
    import folder_paths

    lora = pack_module("instructbooth.lora")
    return lora.load_lora(pack_module("nodes.bridge").Path(folder_paths.get_folder_paths("loras")[0]) / f"{name}.safetensors")


# --- Personalize ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def personalized(pack, tiny, photos):
    """The first Personalize run (shared: later tests reuse its result)."""
    reset_records()
    tiny_hints = tiny[1]
    bridge = pack_module("nodes.bridge")
    original, bridge.architecture_hints = bridge.architecture_hints, lambda model: tiny_hints
    try:
        model, clip, vae = standin("fake_models").comfy_objects(tiny[0])
        before = {k: v.clone() for k, v in tiny[0].items()}
        outputs = run_personalize(personalize_inputs(model, clip, vae, photos))
        records = {"progress": list(standin("comfy.utils").PROGRESS_LOG),
                   "memory": list(standin("comfy.model_management").CALLS),
                   "lora_calls": list(standin("comfy.sd").LORA_CALLS),
                   "saved": lora_file("ib/sks")}  # now: later tests may write the same name
        unchanged = all(torch.equal(before[k], v) for k, v in tiny[0].items())
    finally:
        bridge.architecture_hints = original
    return outputs, records, unchanged


def test_personalize_trains_saves_and_applies_the_lora(personalized):
    (model, clip, lora, loss_map, trigger), records, _ = personalized
    assert trigger == "sks plushie"
    assert len(loss_map["loss"]) == 3 and all(torch.isfinite(torch.tensor(loss_map["loss"])))
    assert records["progress"] == [(1, 3, False), (2, 3, False), (3, 3, False)]
    saved, metadata = records["saved"]
    assert sorted(saved) == sorted(lora) and all(torch.equal(saved[k], lora[k]) for k in lora)
    assert metadata.trigger_phrase == "sks plushie" and metadata.method == "personalize"
    assert metadata.base_model_hash.startswith("weights:") and len(metadata.base_model_hash) == 8 + 64
    raw = pack_module("instructbooth.lora").read_lora_metadata(
        pack_module("nodes.bridge").Path(__import__("folder_paths").get_folder_paths("loras")[0]) / "ib/sks.safetensors")
    assert raw["modelspec.resolution"] == "32x32" and "ss_new_sd_model_hash" not in raw  # kohya's field: file hashes
    assert records["lora_calls"][-1]["keys"] == sorted(lora)
    assert model.patches[-1] == (sorted(k for k in lora if k.startswith("lora_unet_")), 1.0)
    # 4 transformer blocks (down, mid, 2 up) x 2 attentions x 4 projections, each (down, up, alpha)
    assert all(k.startswith("lora_unet_") for k in lora) and len(lora) == 4 * 2 * 4 * 3


def test_personalize_unloads_comfyui_models_before_and_empties_caches_after(personalized):
    assert personalized[1]["memory"] == ["load_models_gpu", "unload_all_models", "soft_empty_cache", "soft_empty_cache"]


def test_personalize_trains_on_copies_under_inference_mode(personalized):
    assert personalized[2], "the MODEL/CLIP/VAE tensors the node received were changed"


def test_a_rerun_with_the_same_inputs_reuses_the_finished_result(personalized, comfy_inputs, photos):
    lora = personalized[0][2]
    _, _, again, loss_map, _ = run_personalize(personalize_inputs(*comfy_inputs, photos))
    assert standin("comfy.utils").PROGRESS_LOG == []  # no training step
    assert "unload_all_models" not in standin("comfy.model_management").CALLS
    assert all(torch.equal(again[k], lora[k]) for k in lora) and loss_map == personalized[0][3]


def test_changed_images_or_settings_train_a_new_run(personalized, comfy_inputs, photos):
    run_personalize(personalize_inputs(*comfy_inputs, photos[:1], steps=1))
    assert standin("comfy.utils").PROGRESS_LOG == [(1, 1, False)]


@pytest.fixture
def fresh_output(tmp_path, monkeypatch):
    """Another ComfyUI output folder: a run there cannot find the runs made so far."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))


def test_a_renamed_output_reuses_the_run_under_the_old_name(personalized, comfy_inputs, photos):
    run_personalize(personalize_inputs(*comfy_inputs, photos, lora_name="ib/renamed"))
    assert standin("comfy.utils").PROGRESS_LOG == []
    renamed, first = lora_file("ib/renamed")[0], personalized[0][2]
    assert all(torch.equal(renamed[k], first[k]) for k in first)


def test_cancel_keeps_a_checkpoint_and_the_rerun_resumes_to_the_same_lora(comfy_inputs, photos, request):
    utils, management = standin("comfy.utils"), standin("comfy.model_management")
    utils.CANCEL_AT = 3
    with pytest.raises(management.InterruptProcessingException):
        run_personalize(personalize_inputs(*comfy_inputs, photos, steps=5, seed=7, lora_name="ib/cancel"))
    folder = run_folder("ib_cancel")
    checkpoint = torch.load(folder / "checkpoint-0000003.pt", weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["trainable"] and not (folder / "result.safetensors").exists()
    assert "unload_all_models" in management.CALLS and management.CALLS[-1] == "soft_empty_cache"  # freed on cancel

    reset_records()
    resumed = run_personalize(personalize_inputs(*comfy_inputs, photos, steps=5, seed=7, lora_name="ib/cancel"))
    assert utils.PROGRESS_LOG == [(4, 5, False), (5, 5, False)]
    request.getfixturevalue("fresh_output")  # the uninterrupted run must not find the resumed one
    straight = run_personalize(personalize_inputs(*comfy_inputs, photos, steps=5, seed=7, lora_name="ib/straight"))
    assert utils.PROGRESS_LOG[-1] == (5, 5, False) and len(utils.PROGRESS_LOG) == 2 + 5
    assert all(torch.equal(resumed[2][k], straight[2][k]) for k in straight[2])
    assert resumed[3] == straight[3]


def test_previews_stream_to_the_progress_bar(comfy_inputs, photos):
    run_personalize(personalize_inputs(*comfy_inputs, photos, steps=2, preview_every=1, seed=3, lora_name="ib/pv"))
    previews = standin("comfy.utils").PREVIEWS
    assert [p[0] for p in previews] == ["JPEG", "JPEG"] and previews[0][1].size == (32, 32) and previews[0][2] == 512


def test_an_identifier_missing_from_a_caption_or_bad_resolution_is_a_clear_error(comfy_inputs, photos):
    with pytest.raises(ValueError, match="resolution must be a multiple"):
        run_personalize(personalize_inputs(*comfy_inputs, photos, resolution=30, lora_name="ib/bad"))
    with pytest.raises(ValueError, match="much smaller than the training resolution"):
        run_personalize(personalize_inputs(*comfy_inputs, [torch.rand(1, 8, 8, 3)], resolution=64, lora_name="ib/bad"))


# --- RL Fine-Tune -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rl_run(pack, tiny, personalized, scorer):
    reset_records()
    bridge = pack_module("nodes.bridge")
    original, bridge.architecture_hints = bridge.architecture_hints, lambda model: tiny[1]
    try:
        model, clip, vae = standin("fake_models").comfy_objects(tiny[0])
        outputs = run_rl(model, clip, vae, scorer, personalized[0][2])
        records = {"progress": list(standin("comfy.utils").PROGRESS_LOG), "previews": list(standin("comfy.utils").PREVIEWS),
                   "memory": list(standin("comfy.model_management").CALLS)}
    finally:
        bridge.architecture_hints = original
    return outputs, records


def test_rl_fine_tune_returns_one_merged_lora_rewards_and_a_curve(rl_run, personalized):
    (model, clip, lora, reward_map, curve), records = rl_run
    personal = personalized[0][2]
    down = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    assert lora[down].shape[0] == personal[down].shape[0] + 2  # subject rank 2 + RL rank 2, concatenated
    assert len(reward_map["loss"]) == 2 and reward_map["reward"] == reward_map["loss"]
    assert curve.shape == (1, 420, 720, 3) and 0 <= float(curve.min()) and float(curve.max()) <= 1
    saved, metadata = lora_file("ib/rl")
    assert all(torch.equal(saved[k], lora[k]) for k in lora) and metadata.method == "ddpo"
    assert metadata.trigger_phrase == "sks plushie"
    assert model.patches[-1][0] == sorted(k for k in lora if k.startswith("lora_unet_"))
    assert [p[:2] for p in records["progress"]] == [(1, 2), (2, 2)]
    assert len(records["previews"]) == 2  # one sample per epoch streams to the UI
    assert records["memory"] == ["load_models_gpu", "unload_all_models", "soft_empty_cache", "soft_empty_cache"]


def test_rl_rerun_reuses_and_cancel_resumes_to_the_same_lora(rl_run, comfy_inputs, scorer, personalized, request):
    base_lora = personalized[0][2]
    run_rl(*comfy_inputs, scorer, base_lora)
    assert standin("comfy.utils").PROGRESS_LOG == []

    utils, management = standin("comfy.utils"), standin("comfy.model_management")
    utils.CANCEL_AT = 2
    with pytest.raises(management.InterruptProcessingException):
        run_rl(*comfy_inputs, scorer, base_lora, seed=5, lora_name="ib/rl_cancel")
    folder = run_folder("ib_rl_cancel")
    assert torch.load(folder / "checkpoint-0000001.pt", weights_only=True)["trainable"]
    reset_records()
    resumed = run_rl(*comfy_inputs, scorer, base_lora, seed=5, lora_name="ib/rl_cancel")
    assert [p[:2] for p in utils.PROGRESS_LOG] == [(2, 2)]  # only the second epoch ran
    request.getfixturevalue("fresh_output")
    straight = run_rl(*comfy_inputs, scorer, base_lora, seed=5, lora_name="ib/rl_straight")
    assert [p[:2] for p in utils.PROGRESS_LOG] == [(2, 2), (1, 2), (2, 2)]  # the straight run trained both epochs
    assert all(torch.equal(resumed[2][k], straight[2][k]) for k in straight[2])
    assert resumed[3] == straight[3]


def test_rwr_without_subject_images_asks_for_them(comfy_inputs, scorer, personalized):
    with pytest.raises(ValueError, match="subject_images"):
        run_rl(*comfy_inputs, scorer, personalized[0][2], method="rwr", rwr_beta=1.0, lora_name="ib/rwr")


@pytest.mark.parametrize("size", [(40, 48), (24, 64)])  # larger and wider than the 32x32 training size
def test_rwr_trains_on_subject_photos_of_any_size(comfy_inputs, scorer, personalized, size):
    photos = torch.rand(2, *size, 3, generator=torch.Generator().manual_seed(5))  # ComfyUI IMAGE, BHWC
    outputs = run_rl(*comfy_inputs, scorer, personalized[0][2], method="rwr", rwr_beta=1.0, epochs=1,
                     lora_name=f"ib/rwr{size[1]}", subject_images=photos)
    tuned, metadata = lora_file(f"ib/rwr{size[1]}")
    assert metadata.method == "rwr" and len(outputs[3]["loss"]) == 1
    assert all(torch.isfinite(t).all() for t in tuned.values())


def test_rl_subject_measure_input_logs_likeness_to_the_photos_and_needs_them(comfy_inputs, scorer, personalized,
                                                                            tmp_path):
    from evaluation_models import tiny_dino_folder

    embedder = pack_module("instructbooth.evaluation").load_embedder(tiny_dino_folder(tmp_path / "dino"))
    photos = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="connect subject_images"):
        run_rl(*comfy_inputs, scorer, personalized[0][2], subject_measure=embedder, lora_name="ib/guard")
    outputs = run_rl(*comfy_inputs, scorer, personalized[0][2], subject_measure=embedder, subject_images=photos,
                     identifier_ratio=1.0, epochs=1, lora_name="ib/guard")
    history = json.loads((run_folder("guard") / "metrics.json").read_text())["epochs"]
    assert len(outputs[3]["loss"]) == 1 and -1.0 <= history[0]["subject_measure"] <= 1.0


# --- Preference pairs and DPO ------------------------------------------------------------------------------


def run_pairs(model, clip, vae, scorer, lora, **changes):
    settings = dict(identifier="sks", class_noun="plushie", prompt_pairs=2, images_per_prompt=2, sample_steps=2,
                    guidance=2.0, resolution=32, min_margin=0.0, cross_pairs="each", seed=0, name="ib_pairs")
    settings.update(changes)
    node = pack_module("nodes.preference_nodes").PreferencePairs
    with torch.inference_mode():
        return node.execute(model=model, clip=clip, vae=vae, image_reward=scorer, lora=lora, **settings).args


def run_dpo(model, clip, vae, pairs, lora, **changes):
    settings = dict(beta=1000.0, steps=2, batch_size=2, learning_rate=1e-4, lora_rank=2, mixed_precision="no",
                    gradient_checkpointing=False, seed=0, checkpoint_every=0, lora_name="ib/dpo")
    settings.update(changes)
    node = pack_module("nodes.preference_nodes").DPOAlign
    with torch.inference_mode():
        return node.execute(model=model, clip=clip, vae=vae, pairs=pairs, lora=lora, **settings).args


def test_preference_pairs_then_dpo_make_one_lora(comfy_inputs, scorer, personalized):
    base_lora = personalized[0][2]
    pairs, examples, summary = run_pairs(*comfy_inputs, scorer, base_lora)
    assert pairs["count"] >= 2 and summary.startswith(f"{pairs['count']} pairs")
    assert examples.shape[0] == 1 and examples.shape[-1] == 3 and examples.shape[2] == 64  # winner | loser, 32 px each
    progress = standin("comfy.utils").PROGRESS_LOG
    assert progress and progress[-1][0] == progress[-1][1]  # one update per prompt, to the end

    reset_records()
    assert run_pairs(*comfy_inputs, scorer, base_lora)[0] == pairs  # finished pairs are reused
    assert standin("comfy.utils").PROGRESS_LOG == []

    model, clip, lora, loss_map, accuracy = run_dpo(*comfy_inputs, pairs, base_lora)
    assert len(loss_map["loss"]) == 2 and accuracy.startswith("implicit preference accuracy step 0:")
    saved, metadata = lora_file("ib/dpo")
    assert metadata.method == "dpo" and metadata.trigger_phrase == "sks plushie"
    down = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    assert saved[down].shape[0] == base_lora[down].shape[0] + 2 and model.patches

    with pytest.raises(pack_module("nodes.bridge").NodeInputError, match="same subject LoRA"):
        run_dpo(*comfy_inputs, pairs, None, lora_name="ib/dpo_other")


def test_cancel_while_class_images_are_generated_stops_before_training(comfy_inputs, photos):
    utils, management = standin("comfy.utils"), standin("comfy.model_management")
    utils.CANCEL_AT = 4  # the bar counts class images first: cancel after the first batch of 4
    with pytest.raises(management.InterruptProcessingException):
        run_personalize(personalize_inputs(*comfy_inputs, photos, steps=5, prior_preservation=True, num_class_images=12,
                                           lora_name="ib/cancel_class"))
    import folder_paths

    runs = Path(folder_paths.get_output_directory()) / "instructbooth"
    assert utils.PROGRESS_LOG == []  # raised at the first report, before any training step
    assert not [p for p in runs.glob("*ib_cancel_class-*/*") if p.name.startswith(("checkpoint-", "result"))]
