"""The node pack against small stand-ins for ComfyUI: schemas, safe file names, bad input,
the LoRA loader and the ImageReward nodes. Training nodes: test_nodes_training.py."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import torch
from nodes_harness import pack_module, reset_records, schema_info, standin

NODE_IDS = ["InstructBoothPersonalize", "InstructBoothImageRewardLoader", "InstructBoothImageRewardScore",
            "InstructBoothBestOfN", "InstructBoothRLFineTune", "InstructBoothPreferencePairs", "InstructBoothDPO",
            "InstructBoothLoadLoRA", "InstructBoothEvaluationModelLoader", "InstructBoothEvaluate",
            "InstructBoothSaveFeedback", "InstructBoothLoadFeedback", "InstructBoothLearnReward",
            "InstructBoothLearnedRewardLoader"]


@pytest.fixture(autouse=True)
def clean_records(pack):
    reset_records()
    yield


@pytest.fixture(scope="module")
def nodes(pack):
    extension = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(extension.on_load())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


@pytest.fixture(scope="module")
def folders(nodes):  # the pack registers its model folders when ComfyUI loads it (comfy_entrypoint)
    import folder_paths

    return {name: folder_paths.get_folder_paths(name)[0] for name in ("loras", "ImageReward")}


@pytest.fixture(scope="module")
def scorer_file(pack, folders, shared_fixtures):
    """The shared tiny ImageReward fixture in models/ImageReward/tiny/ with its config beside it."""
    target = pack_module("nodes.bridge").Path(folders["ImageReward"]) / "tiny"
    target.mkdir(parents=True, exist_ok=True)
    fixture = shared_fixtures / "imagereward_tiny"
    shutil.copy(fixture / "tiny_imagereward.safetensors", target / "tiny_imagereward.safetensors")
    shutil.copy(fixture / "config.json", target / "config.json")
    return "tiny/tiny_imagereward.safetensors"


@pytest.fixture(scope="module")
def scorer(nodes, scorer_file):
    return nodes["InstructBoothImageRewardLoader"].execute(scorer_file, "auto")[0]


# --- registration and schemas -----------------------------------------------------------------


def test_the_root_package_registers_every_node_through_the_v3_entrypoint(pack, nodes):
    assert hasattr(pack, "comfy_entrypoint")
    assert list(nodes) == NODE_IDS


def test_every_node_is_categorised_described_and_every_input_and_output_has_a_tooltip(nodes):
    for node_id, cls in nodes.items():
        info = schema_info(cls)
        assert info["category"] == "InstructBooth" and info["display_name"] and info["description"], node_id
        for kind in info["input"].values():
            for name, (_, options) in kind.items():
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id


def test_the_image_reward_folder_is_registered_for_weight_files(pack, folders):
    import folder_paths

    assert folders["ImageReward"].endswith("models/ImageReward")
    assert {".pt", ".safetensors"} <= folder_paths.folder_names_and_paths["ImageReward"][1]


# --- file names typed in the UI ------------------------------------------------------------------

ESCAPES = ["../outside", "../../etc/passwd", "/tmp/absolute", "~/home", "sub/../../x", "", "  ", "C:/x", "a\x00b"]


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_leave_the_model_folder_are_refused_for_writing_and_reading(pack, folders, name):
    bridge = pack_module("nodes.bridge")
    with pytest.raises(bridge.NodeInputError):
        bridge.output_path_in_folder("loras", name)
    with pytest.raises(bridge.NodeInputError):
        bridge.input_path_in_folder("loras", name)


def test_sub_folders_stay_inside_and_get_the_extension(pack, folders):
    bridge = pack_module("nodes.bridge")
    path = bridge.output_path_in_folder("loras", "people/anna")
    assert path == bridge.Path(folders["loras"]).resolve() / "people" / "anna.safetensors"


def test_a_file_beside_the_folder_cannot_be_read_through_dot_dot(pack, nodes, folders):
    outside = pack_module("nodes.bridge").Path(folders["loras"]).parent / "secret.safetensors"
    outside.write_bytes(b"not yours")
    message = nodes["InstructBoothLoadLoRA"].validate_inputs("../secret.safetensors")
    assert isinstance(message, str) and "'..'" in message
    assert "relative name" in nodes["InstructBoothPersonalize"].validate_inputs(["sks"], ["../../escape"])


# --- bad input --------------------------------------------------------------------------------------


def test_an_sdxl_model_is_refused_by_name_before_any_weights_are_read(pack):
    bridge, fakes = pack_module("nodes.bridge"), standin("fake_models")
    model, clip, vae = fakes.comfy_objects({}, config=fakes.SDXL)
    with pytest.raises(bridge.NodeInputError, match="SDXL model.*Stable Diffusion 1.5"):
        bridge.comfy_state_dict(model, clip, vae)
    assert "load_models_gpu" not in standin("comfy.model_management").CALLS


def test_no_images_is_a_clear_error(pack):
    bridge = pack_module("nodes.bridge")
    with pytest.raises(bridge.NodeInputError, match="no images"):
        bridge.image_batches([torch.zeros(0, 64, 64, 3)])
    with pytest.raises(bridge.NodeInputError, match="IMAGE batches"):
        bridge.image_batches([torch.zeros(64, 64, 3)])


def test_an_identifier_of_two_words_is_refused_at_validation(nodes):
    message = nodes["InstructBoothPersonalize"].validate_inputs(["sks toy"], ["ok_name"])
    assert "one non-empty word" in message
    assert nodes["InstructBoothPersonalize"].validate_inputs(["sks"], ["instructbooth/sks_plushie"]) is True


# --- Load InstructBooth LoRA -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_lora(folders) -> dict:
    """models/loras/ib/toy.safetensors: a small LoRA naming "sks plushie"; returns its state."""
    lora = pack_module("instructbooth.lora")
    state = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.ones(2, 4),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(4, 2),
             "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, 4),
             "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(4, 2)}
    lora.save_lora(pack_module("nodes.bridge").Path(folders["loras"]) / "ib" / "toy.safetensors", state,
                   lora.LoraMetadata(trigger_phrase="sks plushie", identifier="sks", class_noun="plushie"))
    return state


def test_lora_loader_applies_the_file_through_comfyui_and_returns_its_trigger_phrase(pack, nodes, toy_lora):
    state = toy_lora
    fakes = standin("fake_models")
    model, clip, _ = fakes.comfy_objects({})
    node = nodes["InstructBoothLoadLoRA"]
    assert node.validate_inputs("ib/toy.safetensors") is True
    patched_model, patched_clip, phrase = node.execute(model, clip, "ib/toy.safetensors", 0.8, 0.5).args
    assert phrase == "sks plushie"
    call = standin("comfy.sd").LORA_CALLS[-1]
    assert call["keys"] == sorted(state) and (call["strength_model"], call["strength_clip"]) == (0.8, 0.5)
    assert patched_model.patches[-1][1] == 0.8 and len(patched_clip.patches[-1][0]) == 2
    node.execute(model, clip, "ib/toy.safetensors", 0.0, 0.0)
    assert len(standin("comfy.sd").LORA_CALLS) == 1  # zero strengths patch nothing


def test_lora_loader_lists_files_of_the_loras_folder(nodes, toy_lora):
    options = schema_info(nodes["InstructBoothLoadLoRA"])["input"]["required"]["lora_name"][1]["options"]
    assert "ib/toy.safetensors" in options


# --- ImageReward nodes ---------------------------------------------------------------------------------


def test_missing_image_reward_weights_tell_where_to_get_them(nodes, folders):
    loader = nodes["InstructBoothImageRewardLoader"]
    message = loader.validate_inputs("ImageReward.pt")
    assert "no file 'ImageReward.pt'" in message and "huggingface.co/THUDM/ImageReward" in message
    empty = loader.validate_inputs("")
    assert "no ImageReward weights in models/ImageReward" in empty and folders["ImageReward"] in empty
    with pytest.raises(pack_module("nodes.bridge").NodeInputError, match="ImageReward.pt"):
        loader.execute("ImageReward.pt", "auto")


def test_loader_reads_the_sidecar_config_and_scores_like_the_library(pack, scorer, scorer_file, folders,
                                                                     shared_fixtures):
    rewards = pack_module("instructbooth.rewards")
    config = rewards.ImageRewardConfig.from_json(shared_fixtures / "imagereward_tiny" / "config.json")
    reference = rewards.ImageReward.load(shared_fixtures / "imagereward_tiny" / "tiny_imagereward.safetensors", config)
    assert isinstance(scorer, rewards.ImageReward) and scorer.config == config and scorer.dtype == torch.float32
    images = torch.rand(3, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(scorer.score(images, "a cat", layout="BHWC"), reference.score(images, "a cat", layout="BHWC"))


def test_score_node_returns_one_float_per_image_and_a_ranked_table(nodes, scorer):
    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # as ComfyUI runs nodes
        output = nodes["InstructBoothImageRewardScore"].execute(scorer, images, "a red ball")
    scores, table = output.args
    expected = scorer.score(images, "a red ball", layout="BHWC").tolist()
    assert scores == pytest.approx(expected) and len(scores) == 4
    rows = table.splitlines()[2:]
    best = max(range(4), key=lambda i: expected[i])
    assert rows[0].split()[:2] == ["1", str(best)] and output.ui.value == table


def test_best_of_n_keeps_the_k_best_images_sorted(nodes, scorer):
    images = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    all_scores = scorer.score(images, "a dog", layout="BHWC")
    kept, scores, table = nodes["InstructBoothBestOfN"].execute(scorer, images, "a dog", 2).args
    order = torch.argsort(all_scores, descending=True)[:2]
    assert torch.equal(kept, images[order]) and scores == pytest.approx(all_scores[order].tolist())
    assert scores[0] >= scores[1] and len(table.splitlines()) == 4
    with pytest.raises(pack_module("nodes.bridge").NodeInputError, match="only 5 images"):
        nodes["InstructBoothBestOfN"].execute(scorer, images, "a dog", 6)


# --- RL prompts ------------------------------------------------------------------------------------------


def test_rl_prompts_expand_shipped_sets_and_skip_comments(pack):
    rl = pack_module("nodes.rl_node")
    prompts = pack_module("instructbooth.prompts")
    templates = rl.prompt_templates("# comment\n@actions\n{subject} juggling # trailing comment\n{subject} juggling")
    assert templates == prompts.load_prompt_set("actions") + ["{subject} juggling"]
    assert len(rl.prompt_templates(rl.DEFAULT_PROMPTS)) == len(prompts.load_prompt_set("actions")) + len(
        prompts.load_prompt_set("interactions"))


@pytest.mark.parametrize("text, message", [
    ("{subject} riding\na plushie riding", "prompts without {subject}: 'a plushie riding'"),
    ("@nope", "unknown prompt set '@nope'"),
    ("@../../secrets.txt", "unknown prompt set"),
    ("# only a comment\n", "no training prompts"),
])
def test_rl_prompts_lacking_id_or_naming_unknown_sets_fail_validation(nodes, text, message):
    result = nodes["InstructBoothRLFineTune"].validate_inputs(text, "sks", "ib/rl")
    assert isinstance(result, str) and message in result


def test_rl_validation_passes_good_input(nodes):
    assert nodes["InstructBoothRLFineTune"].validate_inputs("{subject} riding a bicycle", "sks", "ib/rl") is True


def test_rl_prompts_of_an_older_workflow_still_validate_and_train_on_the_subject_phrase(pack, nodes):
    """Saved workflows wrote {id} for the subject phrase: they still pass, read as {subject}."""
    rl = pack_module("nodes.rl_node")
    with pytest.warns(FutureWarning, match=r"read as \{subject\}"):
        assert rl.prompt_templates("{id} riding a bicycle\n{subject} reading") == ["{subject} riding a bicycle",
                                                                                  "{subject} reading"]
    with pytest.warns(FutureWarning):
        assert nodes["InstructBoothRLFineTune"].validate_inputs("{id} riding a bicycle", "sks", "ib/rl") is True
    result = nodes["InstructBoothRLFineTune"].validate_inputs("{subject} at {place}", "sks", "ib/rl")
    assert isinstance(result, str) and "unknown placeholders {place}" in result


def _rl_widget_defaults(node) -> dict:
    """The RL node's setting widgets at their defaults (what a freshly added node holds)."""
    skip = {"model", "clip", "vae", "image_reward", "prompts", "identifier", "lora_name", "lora", "subject_images",
            "subject_measure"}
    return {i.id: i.extra.get("default") for i in node.define_schema().inputs if i.id not in skip}


def test_rl_node_defaults_are_the_library_recipe_and_bad_settings_fail_validation(nodes):
    node = nodes["InstructBoothRLFineTune"]
    widgets = _rl_widget_defaults(node)
    config = pack_module("nodes.rl_node")._config(widgets)
    library = pack_module("instructbooth.rl.config").RLConfig()
    assert config == library  # the node's defaults are exactly RLConfig()'s
    for name in ("advantage", "images_per_prompt", "gradient_accumulation_steps", "timestep_window",
                 "tracker_min_count", "kl_weight", "identifier_ratio", "learning_rate", "epochs"):
        assert name in widgets, name
    assert node.validate_inputs("{subject} riding a bicycle", "sks", "ib/rl", **widgets) is True
    message = node.validate_inputs("{subject} riding a bicycle", "sks", "ib/rl", **{**widgets, "images_per_prompt": 1})
    assert isinstance(message, str) and "images_per_prompt=1 every advantage is 0" in message
    message = node.validate_inputs("{subject} riding a bicycle", "sks", "ib/rl", **{**widgets, "sample_batch_size": 6})
    assert "images_per_prompt 4 must be >= 1 and divide sample_batch_size 6" in message


def test_training_seeds_stay_fixed_in_the_frontend(nodes):
    """The frontend adds a "control after generate" widget (default randomize) to any INT named
    seed unless the input says otherwise; a randomized seed would change the run key after every
    run, so a finished run would train again and a cancelled one would not resume."""
    from workflow_graphs import has_control_widget

    seeds = [(name, i) for name, cls in nodes.items() for i in cls.define_schema().inputs if i.id in ("seed", "noise_seed")]
    assert len(seeds) == 5  # Personalize, RL Fine-Tune, Preference Pairs, DPO, Learn Reward
    for name, item in seeds:
        assert item.extra.get("control_after_generate") is False, name
        assert not has_control_widget(item.id, item.extra)
    assert has_control_widget("seed", {}) and has_control_widget("noise_seed", {"control_after_generate": None})


BAD_FILE_NAMES = [".", "./", "a" * 240, "../escape", "/etc/passwd", "", "  ", "sub/../../x", "~/x", "a\x00b", "C:/x"]


@pytest.mark.parametrize("bad", BAD_FILE_NAMES)
def test_every_node_that_takes_a_file_name_refuses_bad_ones_with_a_message(nodes, bad):
    """validate_inputs answers with a message (never raises) for names that leave the folder, are
    empty, are "." or are too long for a run folder (a 240-character name used to train and then
    fail with "File name too long", losing the result)."""
    calls = {
        "InstructBoothLoadLoRA": lambda cls: cls.validate_inputs(bad),
        "InstructBoothPersonalize": lambda cls: cls.validate_inputs(["sks"], [bad]),
        "InstructBoothRLFineTune": lambda cls: cls.validate_inputs("{subject} riding a bicycle", "sks", bad),
        "InstructBoothPreferencePairs": lambda cls: cls.validate_inputs("sks", bad),
        "InstructBoothDPO": lambda cls: cls.validate_inputs(bad),
    }
    for node, call in calls.items():
        answer = call(nodes[node])
        assert isinstance(answer, str) and answer, (node, bad)
