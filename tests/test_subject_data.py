"""Subject images, captions, prompt templates and training batches (no training here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instructbooth.components import tiny_components
from instructbooth.subject_data import (
    Examples,
    SubjectDataError,
    SubjectImage,
    cache_examples,
    caption_prompt,
    class_prompt,
    draw_batch,
    fill_prompt,
    fit_square,
    instance_prompt,
    load_subject_images,
    posterior,
    tensor_to_bchw,
)


def save(path, size=(32, 32), colour="red", mode="RGB"):
    Image.new(mode, size, colour).save(path)
    return path


# --- loading ------------------------------------------------------------------------------------------


def test_folder_images_sorted_with_captions(tmp_path):
    save(tmp_path / "b.png", colour="blue")
    save(tmp_path / "a.jpg", colour="red")
    (tmp_path / "a.txt").write_text("  a photo of {id} {cls} on grass \n")
    (tmp_path / "notes.md").write_text("not an image")
    save(tmp_path / ".hidden.png")
    images = load_subject_images(tmp_path)
    assert [i.name for i in images] == ["a.jpg", "b.png"]
    assert images[0].caption == "a photo of {id} {cls} on grass" and images[1].caption is None
    assert images[1].pixels.shape == (3, 32, 32) and images[1].pixels.dtype == torch.float32
    assert images[1].pixels[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_files_folders_pil_and_tensors_mix(tmp_path):
    folder = tmp_path / "more"
    folder.mkdir()
    save(folder / "x.png")
    single = save(tmp_path / "one.webp", colour="green")
    batch = torch.rand(2, 16, 16, 3)
    images = load_subject_images([str(single), folder, Image.new("RGB", (8, 8)), batch, batch])
    assert [i.name for i in images] == ["one.webp", "x.png", "image 2", "image 3", "image 4", "image 5", "image 6"]
    assert torch.equal(images[3].pixels, batch[0].permute(2, 0, 1))


def test_tensor_layouts_and_alpha():
    bhwc = torch.rand(2, 5, 6, 3)
    assert torch.equal(tensor_to_bchw(bhwc), bhwc.permute(0, 3, 1, 2))  # ComfyUI IMAGE
    bchw = torch.rand(2, 3, 5, 6)
    assert torch.equal(tensor_to_bchw(bchw), bchw)
    assert tensor_to_bchw(torch.rand(5, 6, 3)).shape == (1, 3, 5, 6)
    assert tensor_to_bchw(torch.full((1, 4, 4, 1), 0.5)).shape == (1, 3, 4, 4)  # grey -> RGB
    assert torch.allclose(tensor_to_bchw(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)), torch.ones(1, 3, 2, 2))
    transparent = torch.zeros(1, 2, 2, 4)  # black, alpha 0 -> white
    assert torch.equal(tensor_to_bchw(transparent), torch.ones(1, 3, 2, 2))


def test_rgba_file_is_composited_on_white(tmp_path):
    save(tmp_path / "t.png", colour=(255, 0, 0, 0), mode="RGBA")
    assert torch.equal(load_subject_images(tmp_path)[0].pixels, torch.ones(3, 32, 32))


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.full((1, 4, 4, 3), 2.0), r"\[0, 1\]"),
        (torch.full((1, 4, 4, 3), float("nan")), r"\[0, 1\]"),
        (torch.rand(1, 1, 4, 4, 3), "3 or 4 dimensions"),
        (torch.rand(1, 5, 6, 7), "channel axis"),
    ],
)
def test_bad_tensors(tensor, message):
    with pytest.raises(SubjectDataError, match=message):
        load_subject_images(tensor)


def test_missing_empty_and_corrupt(tmp_path):
    with pytest.raises(SubjectDataError, match="no subject images in folder"):
        load_subject_images(tmp_path)
    with pytest.raises(SubjectDataError, match="no subject images were given"):
        load_subject_images([])
    with pytest.raises(SubjectDataError, match="missing.png does not exist"):
        load_subject_images(tmp_path / "missing.png")
    save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])  # truncated PNG
    with pytest.raises(SubjectDataError, match="cannot read subject image .*cut.png"):
        load_subject_images(tmp_path)


# --- resizing -----------------------------------------------------------------------------------------


def test_fit_square_resizes_shorter_side_and_centre_crops():
    pixels = torch.zeros(3, 20, 40)
    pixels[:, :, 10:30] = 1.0  # a white band in the middle half of the width
    square = fit_square(SubjectImage(pixels, "wide"), resolution=10)
    assert square.shape == (3, 10, 10)
    assert torch.allclose(square[:, :, 1:9], torch.ones(3, 10, 8), atol=1e-3)  # the band fills the crop
    assert fit_square(SubjectImage(torch.rand(3, 16, 16), "same"), 16).shape == (3, 16, 16)


def test_small_images_error_or_upscale():
    small = SubjectImage(torch.rand(3, 7, 9), "small.png")
    with pytest.raises(SubjectDataError, match="small.png is 9x7, much smaller than the training resolution 16"):
        fit_square(small, 16)
    assert fit_square(small, 16, allow_upscale=True).shape == (3, 16, 16)
    assert fit_square(SubjectImage(torch.rand(3, 8, 12), "half"), 16).shape == (3, 16, 16)  # half size: quietly


# --- prompts --------------------------------------------------------------------------------------------


def test_prompt_templates():
    assert instance_prompt("a photo of {id} {cls}{desc}", "sks", "plushie") == "a photo of sks plushie"
    described = instance_prompt("a photo of {id} {cls}{desc}", "sks", "plushie", "with a blue star on its belly")
    assert described == "a photo of sks plushie with a blue star on its belly"
    assert class_prompt("a photo of {cls}", "sks", "plushie") == "a photo of plushie"
    with pytest.raises(SubjectDataError, match=r"no \{id\}"):
        instance_prompt("a photo of {cls}", "sks", "plushie")
    with pytest.raises(SubjectDataError, match=r"unknown placeholders \{who\}"):
        fill_prompt("a {who}", "sks", "plushie")
    assert fill_prompt("a {subject}", "sks", "plushie") == "a sks plushie"  # the one grammar (prompts.py)
    assert fill_prompt("a photo of {id}{cls}", "sks", "") == "a photo of sks"  # an identifier without a class noun
    with pytest.raises(SubjectDataError, match="contains the identifier"):
        class_prompt("a photo of {id} {cls}", "sks", "plushie")
    with pytest.raises(SubjectDataError, match="one non-empty word"):
        instance_prompt("a photo of {id} {cls}", "s ks", "plushie")


def test_captions_must_mention_the_identifier():
    with_placeholder = SubjectImage(torch.zeros(3, 1, 1), "a.png", "{id} {cls} in the snow")
    assert caption_prompt(with_placeholder, "sks", "plushie") == "sks plushie in the snow"
    literal = SubjectImage(torch.zeros(3, 1, 1), "b.png", "an sks plushie, studio light")
    assert caption_prompt(literal, "sks", "plushie") == "an sks plushie, studio light"
    without = SubjectImage(torch.zeros(3, 1, 1), "c.png", "a plushie called sksy")
    with pytest.raises(SubjectDataError, match="caption of c.png"):
        caption_prompt(without, "sks", "plushie")


# --- batches --------------------------------------------------------------------------------------------


def test_each_epoch_visits_every_image_once():
    examples = Examples(torch.zeros(5, 3, 2, 2), ["p"] * 5, seed=3)
    epoch = torch.cat([examples.rows(step, 1) for step in range(5)])
    assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(examples.rows(7, 2), Examples(torch.zeros(5, 3, 2, 2), ["p"] * 5, seed=3).rows(7, 2))


def test_cached_and_uncached_batches_are_the_same():
    parts = tiny_components()
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of sks plushie", "a photo of sks plushie", "sks plushie on a table"]
    cached, plain = Examples(pixels, prompts, seed=1), Examples(pixels, prompts, seed=1)
    cache_examples(cached, parts, flip=True, prompts=True)
    assert cached.mean.shape == (2, 3, 4, 8, 8) and cached.embeddings.shape == (3, 77, 32)
    for step in range(4):
        a = draw_batch(cached, step, 2, True, parts, torch.Generator().manual_seed(step))
        b = draw_batch(plain, step, 2, True, parts, torch.Generator().manual_seed(step))
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-6)


def test_flips_draw_both_orientations():
    parts = tiny_components()
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    examples = Examples(pixels, ["x"], seed=0)
    cache_examples(examples, parts, flip=True, prompts=False)
    assert torch.allclose(examples.mean[0], posterior(parts, pixels)[0], atol=1e-5)
    assert torch.allclose(examples.mean[1], posterior(parts, pixels.flip(-1))[0], atol=1e-5)

    parts.vae = None  # pixel space: latents are exact, so each draw is one orientation or the other
    examples = Examples(pixels, ["x"], seed=0)
    generator = torch.Generator().manual_seed(0)
    drawn = [draw_batch(examples, step, 1, True, parts, generator)[0] for step in range(12)]
    plain, flipped = posterior(parts, pixels)[0], posterior(parts, pixels.flip(-1))[0]
    kinds = [torch.equal(d, plain) + 2 * torch.equal(d, flipped) for d in drawn]
    assert set(kinds) == {1, 2}
    unflipped = [draw_batch(examples, step, 1, False, parts, generator)[0] for step in range(4)]
    assert all(torch.equal(d, plain) for d in unflipped)


@pytest.mark.parametrize("mode, values, top", [("I;16", np.uint16, 65535), ("I", np.int32, 65535),
                                                ("F", np.float32, 1.0)])
def test_deep_photos_are_scaled_like_imagereward_reads_them(tmp_path, mode, values, top):
    """16-bit, 32-bit and float pictures were clipped to white (or black) squares; they are now
    scaled to 8 bits as ImageReward's reader does (one reader for the pack)."""
    from instructbooth.rewards.image_reward.preprocess import preprocess_pil
    from instructbooth.subject_data import pil_to_tensor

    ramp = (np.linspace(0, 1, 64, dtype=np.float64)[None, :].repeat(32, 0) * top).astype(values)
    image = Image.fromarray(ramp)
    tensor = pil_to_tensor(image)
    assert 0.45 < float(tensor.mean()) < 0.55 and float(tensor.min()) < 0.02 and float(tensor.max()) > 0.98
    grey = Image.fromarray((tensor[0].numpy() * 255).round().astype(np.uint8))
    assert torch.allclose(preprocess_pil(grey), preprocess_pil(image), atol=1e-6)
