"""CLIP-T, CLIP-I and DINO: exact numbers on constructed cases, equality with torchmetrics'
CLIPScore and transformers' ViTModel on tiny random models made here, and refusals that say
what to bring."""

from __future__ import annotations

import math

import pytest
import torch
from evaluation_models import original_dino_state, pictures, tiny_clip_folder, tiny_dino_folder, tiny_dino_model
from safetensors.torch import save_file

from instructbooth.evaluation import (
    EvaluationWeightsError,
    ImageProcessing,
    clip_score_100,
    load_clip,
    load_dino,
    load_embedder,
    mean_reference_cosine,
    paired_cosine,
)

PROMPTS = ["a red plushie on the beach", "a plushie in the snow", "a shiny plushie", "a cube shaped plushie"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return tiny_dino_folder(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def clip(clip_folder):
    return load_clip(clip_folder)


@pytest.fixture(scope="module")
def dino(dino_folder):
    return load_dino(dino_folder)


# --- the conventions on constructed embeddings ------------------------------------------------------


def test_cosines_of_constructed_embeddings():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert paired_cosine(a, b).tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-7)
    references = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    generated = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # image 0: cos 1 with the first reference, 0 with the second; image 1: 1/sqrt(2) with both
    assert mean_reference_cosine(generated, references).tolist() == pytest.approx([0.5, 1 / math.sqrt(2)])
    assert clip_score_100(torch.tensor([0.3, 0.1])) == pytest.approx(20.0)
    assert clip_score_100(torch.tensor([-0.3, 0.1])) == 0.0  # torchmetrics clamps the mean at 0


def test_identical_images_have_clip_i_and_dino_one_and_the_order_does_not_matter(clip, dino):
    images = pictures(3)
    for embedder in (clip, dino):
        same = embedder.reference_similarity(images[:1], images[:1])
        assert same.tolist() == pytest.approx([1.0], abs=1e-6)
        pairwise = embedder.reference_similarity(images, images.flip(0))
        assert pairwise.shape == (3,)
        by_hand = torch.nn.functional.cosine_similarity(embedder.embed_images(images)[:, None],
                                                        embedder.embed_images(images)[None], dim=-1).mean(1)
        assert pairwise.tolist() == pytest.approx(by_hand.tolist(), abs=1e-6)


def test_batching_does_not_change_embeddings(clip_folder, dino_folder):
    images = pictures(5, seed=3)
    for load, folder in ((load_clip, clip_folder), (load_dino, dino_folder)):
        whole, small = load(folder, batch_size=16), load(folder, batch_size=2)
        assert torch.allclose(whole.embed_images(images), small.embed_images(images), atol=1e-6)
    assert torch.allclose(load_clip(clip_folder).embed_texts(PROMPTS), load_clip(clip_folder, batch_size=3)
                          .embed_texts(PROMPTS), atol=1e-6)


# --- equality with the trusted implementations --------------------------------------------------------


class _FeaturesAsTensors(torch.nn.Module):
    """transformers 5's get_*_features return an output object; torchmetrics expects the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values):
        out = self.model.get_image_features(pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, input_ids, attention_mask):
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _torchmetrics_clip_score(folder):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    return CLIPScore(model_name_or_path=lambda: (_FeaturesAsTensors(model), processor))


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (71, 45)])
def test_clip_t_equals_torchmetrics_clip_score(clip, clip_folder, size):
    """Same tiny CLIP, same pictures (8-bit, as torchmetrics takes them): per image, torchmetrics'
    cosine (its score / 100) equals our CLIP-T to 1e-6 (measured: at most 1.4e-7, float32 rounding),
    and its CLIPScore of the batch equals clip_score_100 (both on the 0-100 scale) to 1e-4."""
    images = pictures(4, *size, seed=sum(size))
    metric = _torchmetrics_clip_score(clip_folder)
    ours = clip.text_similarity(images, PROMPTS)
    as_uint8 = [(image * 255).round().to(torch.uint8) for image in images]
    for index, (image, prompt) in enumerate(zip(as_uint8, PROMPTS)):
        metric.reset()
        metric.update(image, prompt)
        assert abs(float(metric.score) / 100 - float(ours[index])) < 1e-6, (index, float(metric.score))
    metric.reset()
    metric.update(as_uint8, PROMPTS)
    assert abs(float(metric.compute()) - clip_score_100(ours)) < 1e-4


def test_dino_embedding_equals_vit_model_cls_token(dino, dino_folder):
    """DreamBooth's evaluation: ViTImageProcessor + ViTModel, last_hidden_state[:, 0]."""
    from transformers import ViTImageProcessor, ViTModel

    model = ViTModel.from_pretrained(str(dino_folder), local_files_only=True, add_pooling_layer=False).eval()
    processor = ViTImageProcessor.from_pretrained(str(dino_folder), local_files_only=True)
    images = pictures(3, 45, 61, seed=7)
    as_uint8 = [(image * 255).round().to(torch.uint8) for image in images]
    with torch.no_grad():
        pixels = processor(images=as_uint8, return_tensors="pt")["pixel_values"]
        expected = model(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(dino.processing(images), pixels, atol=1e-6)
    assert (dino.embed_images(images) - expected).abs().max() < 1e-5


def test_original_dino_checkpoint_loads_to_the_same_embeddings(tmp_path):
    """A .pth in facebookresearch/dino's layout (fused qkv, weights_only) embeds like the
    transformers folder of the same weights (LayerNorm eps 1e-6, as the original)."""
    model = tiny_dino_model(seed=4, width=64, heads=1)
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in original_dino_state(model).items()}}, tmp_path / "dino.pth")
    images = pictures(2, seed=5)
    from_pth, from_folder = load_dino(tmp_path / "dino.pth"), load_dino(folder)
    assert from_pth.model.config.num_attention_heads == 1 and from_pth.model.config.image_size == 32
    assert (from_pth.embed_images(images) - from_folder.embed_images(images)).abs().max() < 1e-5


def test_a_single_clip_file_without_config_infers_the_architecture(tmp_path, clip_folder):
    from instructbooth.evaluation.image_processing import CLIP_MEAN
    from evaluation_models import tiny_clip_model

    model = tiny_clip_model(seed=2, width=64, heads=1)
    model.save_pretrained(tmp_path / "folder")
    lone = tmp_path / "lone"
    lone.mkdir()
    (tmp_path / "folder" / "model.safetensors").rename(lone / "clip_tiny.safetensors")
    clip = load_clip(lone / "clip_tiny.safetensors")
    assert clip.model.config.vision_config.image_size == 32 and clip.model.config.projection_dim == 16
    assert clip.processing.mean == CLIP_MEAN and clip.processing.crop == (32, 32)
    images = pictures(2, seed=9)
    with torch.no_grad():
        direct = model.visual_projection(model.vision_model(pixel_values=clip.processing(images)).pooler_output)
    assert (clip.embed_images(images) - direct).abs().max() < 1e-5


def test_auto_tells_clip_from_dino(clip_folder, dino_folder):
    assert load_embedder(clip_folder).kind == "clip"
    assert load_embedder(dino_folder / "model.safetensors").kind == "dino"


def test_processing_constants_come_from_the_folder(clip, dino):
    assert clip.processing.resize_shortest_edge == 32 and clip.processing.crop == (32, 32)
    assert dino.processing.resize_to == (32, 32) and dino.processing.crop is None
    assert dino.processing.mean == (0.485, 0.456, 0.406)
    default = ImageProcessing.dino_default(224)
    assert default.resize_to == (224, 224) and default.resample == 2


# --- refusals ---------------------------------------------------------------------------------------


def test_missing_weights_say_what_is_expected_and_where(tmp_path):
    with pytest.raises(EvaluationWeightsError, match="no CLIP weights at .*config.json \\+ model.safetensors.*"
                                                     "models/evaluation"):
        load_clip(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(EvaluationWeightsError, match="no single DINO weights file in .*found: readme.txt"):
        load_dino(tmp_path / "empty")


def test_wrong_weights_are_named(tmp_path, clip_folder, dino_folder):
    with pytest.raises(EvaluationWeightsError, match="not a transformers CLIP model"):
        load_clip(dino_folder / "model.safetensors")
    with pytest.raises(EvaluationWeightsError, match="not a DINO ViT"):
        load_dino(clip_folder / "model.safetensors")
    from safetensors.torch import load_file

    vision_only = {k: v for k, v in load_file(str(clip_folder / "model.safetensors")).items()
                   if not k.startswith("text_")}
    save_file(vision_only, tmp_path / "clip_vision.safetensors")
    with pytest.raises(EvaluationWeightsError, match="vision tower only.*text tower"):
        load_clip(tmp_path / "clip_vision.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(EvaluationWeightsError, match="neither a CLIP nor a DINO"):
        load_embedder(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EvaluationWeightsError, match="cannot read .*broken.safetensors"):
        load_dino(tmp_path / "broken.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path, capsys):
    torch.save({"cls_token": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(EvaluationWeightsError, match="weights_only=True"):
        load_dino(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


def test_a_truncated_model_names_the_missing_weights(tmp_path, dino_folder):
    from safetensors.torch import load_file
    import shutil

    shutil.copytree(dino_folder, tmp_path / "cut")
    state = {k: v for k, v in load_file(str(dino_folder / "model.safetensors")).items() if "layer.1." not in k}
    save_file(state, tmp_path / "cut" / "model.safetensors")
    with pytest.raises(EvaluationWeightsError, match="not a complete DINO ViT model: weights .*missing"):
        load_dino(tmp_path / "cut")
