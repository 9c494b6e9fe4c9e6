"""The feedback folder (good/ and bad/, a prompt beside each image) and its ComfyUI nodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instructbooth.feedback import FeedbackError, next_number, parse_labels, read_feedback, write_feedback


def test_parse_labels_reads_letters_digits_and_skips():
    assert parse_labels("gbbg", 4) == [True, False, False, True]
    assert parse_labels("1, 0 s Y", 4) == [True, False, None, True]
    assert parse_labels("G_b", 3) == [True, None, False]


def test_parse_labels_refuses_wrong_counts_and_letters():
    with pytest.raises(FeedbackError, match="3 labels for 4 images"):
        parse_labels("gbb", 4)
    with pytest.raises(FeedbackError, match="'q'"):
        parse_labels("gbq", 3)


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (4, 3, 6, 5), generator=generator).float() / 255.0)


def test_labels_and_prompts_round_trip_through_the_folder(tmp_path):
    images = _batch()
    prompts = ["a red car", "a blue car", "a cat", "two dogs"]
    written = write_feedback(tmp_path, images, prompts, [True, False, None, True])

    assert [p.relative_to(tmp_path).as_posix() for p in (w.image for w in written)] == [
        "good/00001.png", "bad/00002.png", "good/00003.png"]
    assert (tmp_path / "good" / "00003.txt").read_text(encoding="utf-8") == "two dogs\n"
    items = read_feedback(tmp_path)
    assert [(i.image.name, i.prompt, i.good) for i in items] == [
        ("00001.png", "a red car", True), ("00003.png", "two dogs", True), ("00002.png", "a blue car", False)]
    pixels = np.asarray(Image.open(tmp_path / "bad" / "00002.png"))  # 8-bit exactly as given
    assert np.array_equal(pixels, (images[1].permute(1, 2, 0) * 255).round().byte().numpy())

    more = write_feedback(tmp_path, images[:1].permute(0, 2, 3, 1), "a green car", [False])  # ComfyUI layout
    assert more[0].image == tmp_path / "bad" / "00004.png" and next_number(tmp_path) == 5
    shutil.move(tmp_path / "bad" / "00004.png", tmp_path / "good" / "00004.png")  # relabel by moving
    shutil.move(tmp_path / "bad" / "00004.txt", tmp_path / "good" / "00004.txt")
    assert {i.image.name: i.good for i in read_feedback(tmp_path)}["00004.png"] is True


def test_saving_the_same_images_again_adds_no_copies_and_moves_relabelled_ones(tmp_path):
    images, prompts = _batch(), ["a red car", "a blue car", "a cat", "two dogs"]
    write_feedback(tmp_path, images, prompts, [True, False, None, True])
    again = write_feedback(tmp_path, images, prompts, [True, True, False, True])  # labels changed, re-queued
    assert [(w.image.relative_to(tmp_path).as_posix(), w.status) for w in again] == [
        ("good/00001.png", "kept"), ("good/00002.png", "relabelled"), ("bad/00004.png", "new"),
        ("good/00003.png", "kept")]
    items = read_feedback(tmp_path)
    assert sorted((i.image.name, i.prompt, i.good) for i in items) == [
        ("00001.png", "a red car", True), ("00002.png", "a blue car", True), ("00003.png", "two dogs", True),
        ("00004.png", "a cat", False)]
    assert not (tmp_path / "bad" / "00002.png").exists() and not (tmp_path / "bad" / "00002.txt").exists()
    # identical images in one batch are one example each; a re-queue matches each to its own file
    same = images[:1].expand(2, -1, -1, -1)
    first = write_feedback(tmp_path / "twins", same, "a red car", [True, False])
    assert [w.image.relative_to(tmp_path / "twins").as_posix() for w in first] == ["good/00001.png", "bad/00002.png"]
    assert [w.status for w in write_feedback(tmp_path / "twins", same, "a red car", [True, False])] == ["kept", "kept"]
    both_bad = write_feedback(tmp_path / "twins", same, "a red car", [False, False])
    assert [(w.image.name, w.good, w.status) for w in both_bad] == [("00002.png", False, "kept"),
                                                                   ("00001.png", False, "relabelled")]
    # the same pixels under another prompt are another example
    other = write_feedback(tmp_path, images[:1], "a red truck", [True])
    assert other[0].status == "new" and other[0].image.name == "00005.png"


def test_read_feedback_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(FeedbackError, match="does not exist"):
        read_feedback(tmp_path / "missing")
    (tmp_path / "good").mkdir()
    with pytest.raises(FeedbackError, match="no labelled images"):
        read_feedback(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "good" / "x.png")
    with pytest.raises(FeedbackError, match="x.txt"):
        read_feedback(tmp_path)


def test_write_feedback_refuses_mismatched_counts(tmp_path):
    with pytest.raises(FeedbackError, match="4 images, 2 prompts and 4 labels"):
        write_feedback(tmp_path, _batch(), ["a", "b"], [True] * 4)


# --- nodes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(pack):
    """This module's nodes alone (the rest of the pack is tested in test_nodes.py)."""
    from nodes_harness import pack_module

    pack_module("nodes.bridge").register_model_folders()
    module = pack_module("nodes.feedback_nodes")
    classes = (module.SaveFeedback, module.LoadFeedback, module.LearnReward, module.LearnedRewardLoader)
    return {cls.define_schema().node_id: cls for cls in classes}


def test_save_node_shows_first_then_saves_the_labelled_images(nodes):
    import folder_paths

    save, load = nodes["InstructBoothSaveFeedback"], nodes["InstructBoothLoadFeedback"]
    images = _batch().permute(0, 2, 3, 1)  # ComfyUI IMAGE
    first = save.execute(images, "a red car", "", "fb")
    assert "nothing saved" in first[0]
    with pytest.raises(ValueError, match="fb does not exist"):
        load.execute("fb")
    before = load.fingerprint_inputs("fb")
    summary = save.execute(images, "a red car", "g b s g", "fb")[0]
    assert "saved 3 of 4 images" in summary and "2 good, 1 bad, 1 skipped" in summary
    assert load.fingerprint_inputs("fb") != before  # a re-queue reads the folder again
    items, text = load.execute("fb")[:2]
    assert text == "3 labelled images: 2 good, 1 bad"
    assert all(i.prompt == "a red car" for i in items)
    requeued = save.execute(images, "a red car", "g g s g", "fb")[0]  # the same batch, one label changed
    assert "2 already there; 1 moved to its new label" in requeued
    assert load.execute("fb")[1] == "3 labelled images: 3 good, 0 bad"
    assert items[0].image.parent.parent.resolve() == (Path(folder_paths.get_output_directory()) / "fb").resolve()


def test_save_node_refuses_folders_outside_output_and_bad_labels(nodes):
    save = nodes["InstructBoothSaveFeedback"]
    with pytest.raises(ValueError, match="relative name"):
        save.execute(_batch().permute(0, 2, 3, 1), "p", "gggg", "../escape")
    with pytest.raises(ValueError, match="2 labels for 4 images"):
        save.execute(_batch().permute(0, 2, 3, 1), "p", "gb", "fb2")
