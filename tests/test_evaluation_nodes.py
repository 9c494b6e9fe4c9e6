"""The evaluation nodes against the ComfyUI stand-ins: the loader reads models/evaluation, the
Evaluate node's numbers are the library's, its table and refusals."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from evaluation_models import pictures, tiny_clip_folder, tiny_dino_folder
from nodes_harness import pack_module


@pytest.fixture(scope="module")
def nodes(pack):
    asyncio.run(pack.comfy_entrypoint())  # registers the model folders
    module = pack_module("nodes.evaluation_nodes")
    assert {module.EvaluationModelLoader, module.Evaluate} <= set(pack.nodes.node_classes())
    return {cls.define_schema().node_id: cls for cls in (module.EvaluationModelLoader, module.Evaluate)}


@pytest.fixture(scope="module")
def models(pack):
    import folder_paths

    root = pack_module("nodes.bridge").Path(folder_paths.get_folder_paths("evaluation")[0])
    tiny_clip_folder(root / "clip-tiny")
    tiny_dino_folder(root / "dino-tiny")
    return {"clip": "clip-tiny/model.safetensors", "dino": "dino-tiny/model.safetensors"}


def bhwc(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 2, 3, 1).contiguous()


def test_the_pack_registers_models_evaluation_and_the_loader_lists_it(nodes, models):
    import folder_paths

    assert folder_paths.get_folder_paths("evaluation")[0].endswith("models/evaluation")
    listed = folder_paths.get_filename_list("evaluation")
    assert models["clip"] in listed and models["dino"] in listed and "clip-tiny/config.json" not in listed
    loader = nodes["InstructBoothEvaluationModelLoader"]
    assert loader.validate_inputs(models["clip"]) is True
    assert "no file 'absent.safetensors' in the evaluation folder" in loader.validate_inputs("absent.safetensors")
    assert loader.execute(models["dino"], "auto")[0].kind == "dino"


def test_evaluate_gives_the_library_numbers_per_prompt_and_overall(nodes, models):
    loader, evaluate = nodes["InstructBoothEvaluationModelLoader"], nodes["InstructBoothEvaluate"]
    clip, dino = loader.execute(models["clip"], "clip")[0], loader.execute(models["dino"], "dino")[0]
    images, photos = pictures(4, seed=1), [pictures(1, 40, 48, seed=2), pictures(2, 36, 36, seed=3)]
    out = evaluate.execute([bhwc(images)], ["a plushie in the snow\na red plushie"], [bhwc(p) for p in photos],
                           clip=[clip], dino=[dino], label=["dreambooth"])
    clip_t, clip_i, dino_mean, reward, table = out[:5]
    references = [photos[0][0], *photos[1]]
    texts = ["a plushie in the snow"] * 2 + ["a red plushie"] * 2
    assert clip_t == pytest.approx(float(clip.text_similarity(images, texts).mean()), abs=1e-6)
    assert clip_i == pytest.approx(float(clip.reference_similarity(images, references).mean()), abs=1e-6)
    assert dino_mean == pytest.approx(float(dino.reference_similarity(images, references).mean()), abs=1e-6)
    assert math.isnan(reward)
    lines = table.splitlines()
    assert lines[0] == "InstructBooth evaluation - dreambooth" and "CLIP-T" in lines[1] and "DINO" in lines[1]
    assert lines[2].startswith("a plushie in the snow") and lines[4].startswith("overall")
    assert f"{dino_mean:.4f}" in lines[4]


def test_identical_images_score_one(nodes, models):
    dino = nodes["InstructBoothEvaluationModelLoader"].execute(models["dino"], "dino")[0]
    photo = bhwc(pictures(1, seed=4))
    out = nodes["InstructBoothEvaluate"].execute([photo], ["a plushie"], [photo], dino=[dino])
    assert out[2] == pytest.approx(1.0, abs=1e-6) and math.isnan(out[0])


def test_evaluate_refuses_what_cannot_be_measured(nodes, models):
    bridge = pack_module("nodes.bridge")
    loader, evaluate = nodes["InstructBoothEvaluationModelLoader"], nodes["InstructBoothEvaluate"]
    dino = loader.execute(models["dino"], "dino")[0]
    images = [bhwc(pictures(3, seed=5))]
    with pytest.raises(bridge.NodeInputError, match="the clip input got a dino model"):
        evaluate.execute(images, ["a plushie"], images, clip=[dino])
    with pytest.raises(bridge.NodeInputError, match="3 images cannot be split into 2 equal blocks"):
        evaluate.execute(images, ["a\nb"], images, dino=[dino])
    with pytest.raises(bridge.NodeInputError, match="write the prompt"):
        evaluate.execute(images, [""], images, dino=[dino])
    with pytest.raises(ValueError, match="nothing to measure"):
        evaluate.execute(images, ["a plushie"], images)
    with pytest.raises(bridge.NodeInputError, match="no CLIP or DINO weights chosen; put it in models/evaluation"):
        loader.execute("", "auto")
