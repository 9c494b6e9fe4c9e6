"""A bad-input table for the command line: every case ends with a non-zero exit code, an error on
stderr that names the problem and what to do, no traceback, and no input file changed. The
checks run before any model is loaded, so the cases take milliseconds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from instructbooth.cli import main


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Inputs a user has: a checkpoint, photos (a folder and one file), a LoRA, ImageReward weights."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(photos / f"{i}.png")
    paths = {"photos": photos, "photo": photos / "0.png", "ckpt": tmp_path / "sd15.safetensors",
             "lora": tmp_path / "sks.safetensors", "reward": tmp_path / "ImageReward.pt", "dir": tmp_path / "runs",
             "plainfile": tmp_path / "notes.txt", "tmp": tmp_path}
    for key in ("ckpt", "lora", "reward", "plainfile"):
        paths[key].write_bytes(key.encode() * 100)
    (tmp_path / "p.txt").write_text("{subject} riding a bicycle\n{subject} in {place}\n")
    from safetensors.torch import save_file

    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.full((2, 32), float("nan")),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2)}, tmp_path / "nan.safetensors")
    (paths["dir"]).mkdir()
    return paths


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


PERSONALIZE = ["personalize", "--checkpoint", "{ckpt}", "--images", "{photos}"]
RL = ["rl", "--random-model", "tiny", "--identifier", "sks", "--class-noun", "plushie", "--reward", "brightness"]
CASES = {  # name -> (argv with {placeholders}, what stderr must say)
    "output is the base checkpoint": (PERSONALIZE + ["--output", "{ckpt}"], "would overwrite the input file"),
    "output is a photo": (["personalize", "--checkpoint", "{ckpt}", "--images", "{photo}", "--output", "{photo}"],
                          "would overwrite the input file"),
    "output inside the photo folder": (PERSONALIZE + ["--output", "{photos}/lora.safetensors"],
                                       "would overwrite the input folder"),
    "output in the checkpoint folder": (PERSONALIZE + ["--checkpoint-dir", "{dir}", "--output", "{dir}/x.safetensors"],
                                        "inside the checkpoint folder"),
    "output is a folder": (PERSONALIZE + ["--output", "{dir}"], "is a folder; give a file name"),
    "output under a file": (PERSONALIZE + ["--output", "{plainfile}/x.safetensors"], "is a file, not a folder"),
    "output name too long": (PERSONALIZE + ["--output", "{tmp}/" + "n" * 300 + ".safetensors"],
                             "choose a shorter name"),
    "output where nothing can be written": (PERSONALIZE + ["--output", "/proc/sks.safetensors"], "cannot write in"),
    "checkpoint folder is a file": (PERSONALIZE + ["--checkpoint-dir", "{plainfile}", "--output", "{tmp}/o.safetensors"],
                                    "is a file, not a folder"),
    "rl output is the personalized LoRA": (RL + ["--lora", "{lora}", "--output", "{lora}"],
                                           "would overwrite the input file"),
    "rl output is the reward file": (RL[:-1] + ["imagereward:{reward}", "--output", "{reward}"],
                                     "would overwrite the input file"),
    "rl micro-batch of 0": (RL + ["--output", "{tmp}/o.safetensors", "--train-batch-size", "0"],
                            "must be >= 1"),
    "rl infinite learning rate": (RL + ["--output", "{tmp}/o.safetensors", "--learning-rate", "inf"],
                                  "must be finite numbers: learning_rate=inf"),
    "rl group advantages of single images": (RL + ["--output", "{tmp}/o.safetensors", "--images-per-prompt", "1"],
                                             "images_per_prompt=1 every advantage is 0"),
    "rl unknown device": (RL + ["--output", "{tmp}/o.safetensors", "--device", "banana"], "unknown device 'banana'"),
    "dpo output is the checkpoint": (["dpo", "--checkpoint", "{ckpt}", "--reward", "brightness", "--output", "{ckpt}"],
                                     "would overwrite the input file"),
    "generate into a file": (["generate", "--random-model", "tiny", "--prompt", "a dog", "--output-dir", "{plainfile}"],
                             "is a file, not a folder"),
    "score a missing model": (["score", "--model", "{tmp}/missing.pt", "--prompt", "a dog", "{photo}"], "missing.pt"),
    "generate at a size the VAE cannot make": (["generate", "--random-model", "tiny", "--prompt", "a dog", "--width",
                                                "100", "--height", "68", "--output-dir", "{tmp}/o"], "96x64"),
    "rl at a size the VAE cannot make": (RL + ["--output", "{tmp}/o.safetensors", "--width", "100", "--height", "68"],
                                         "96x64 is the nearest below"),
    "rl gradient clipping at 0": (RL + ["--output", "{tmp}/o.safetensors", "--max-grad-norm", "0"],
                                  "0 zeroes every update"),
    "rl prompts with an unknown placeholder": (RL + ["--output", "{tmp}/o.safetensors", "--prompts", "{tmp}/p.txt"],
                                               "unknown placeholders {place}"),
    "generate with guidance nan": (["generate", "--random-model", "tiny", "--prompt", "a dog", "--guidance", "nan",
                                    "--output-dir", "{tmp}/o"], "--guidance must be a finite number"),
    "generate from a LoRA with NaN weights": (["generate", "--random-model", "tiny", "--prompt", "a dog", "--lora",
                                              "{tmp}/nan.safetensors", "--output-dir", "{tmp}/o"],
                                             "holds NaN or inf weights"),
    "personalize gradient clipping at 0": (PERSONALIZE + ["--output", "{tmp}/o.safetensors", "--max-grad-norm", "0"],
                                           "0 zeroes every update"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_on_stderr_and_nothing_changes(name, files, capsys):
    argv, message = CASES[name]
    argv = [part.format(**files) for part in argv]
    before = _digests(files["tmp"])
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0, captured.out
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert _digests(files["tmp"]) == before  # no input changed, nothing half-written


def test_a_result_that_cannot_be_saved_is_kept_and_its_place_named(tmp_path):
    """A full disk at the very end: the trained result goes to the temporary folder instead."""
    import errno

    from instructbooth.outputs import save_or_rescue

    target, lines = tmp_path / "out" / "sks.safetensors", []

    def save(path: Path) -> Path:
        if path == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        path.write_bytes(b"lora")
        return path

    written, saved = save_or_rescue(save, target, log=lines.append)
    try:
        assert not saved and written.read_bytes() == b"lora" and written.name.endswith("sks.safetensors")
        assert "No space left on device" in lines[0] and str(written) in lines[0]
    finally:
        written.unlink(missing_ok=True)


# --- resuming with other inputs, one test per trainer's command ------------------------------------


def test_rl_resume_with_other_prompts_is_refused(tmp_path, capsys):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("{subject} riding a bicycle\n")
    second.write_text("{subject} swimming\n")
    common = RL + ["--output", str(tmp_path / "o.safetensors"), "--checkpoint-dir", str(tmp_path / "ck"),
                   "--heldout", "none", "--sample-steps", "2", "--height", "16", "--width", "16",
                   "--sample-batch-size", "2", "--sample-batches", "1", "--images-per-prompt", "2",
                   "--train-batch-size", "2", "--gradient-accumulation-steps", "1", "--epochs", "1"]
    assert main(common + ["--prompts", str(first)]) == 0
    capsys.readouterr()
    assert main(common + ["--prompts", str(second), "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "made from other inputs (prompts differ)" in err and "--no-resume" in err
    assert main(common + ["--prompts", str(first), "--epochs", "2"]) == 0  # the same inputs resume


def test_personalize_resume_with_other_photos_is_refused(tmp_path, capsys):
    from instructbooth.checkpoint import save_checkpoint
    from instructbooth.components import tiny_components

    base = save_checkpoint(tiny_components(), tmp_path / "base.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (200, 30 * i, 30)).save(photos / f"{i}.png")
    args = ["personalize", "--checkpoint", str(base), "--images", str(photos), "--output",
            str(tmp_path / "sks.safetensors"), "--resolution", "32", "--steps", "2", "--rank", "2",
            "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu"]
    assert main(args) == 0
    Image.new("RGB", (32, 32), (0, 0, 255)).save(photos / "1.png")  # another photo, same name
    capsys.readouterr()
    assert main(args[:-6] + ["--steps", "4"] + args[-4:]) == 1
    assert "made from other inputs (photos differ)" in capsys.readouterr().err


def test_dpo_resume_with_another_taxonomy_is_refused(tmp_path, capsys, monkeypatch):
    import json
    import sys
    import types

    from test_dpo import TAXONOMY, pixel_model

    stand_in = types.ModuleType("instructbooth.checkpoint")
    stand_in.load_checkpoint = lambda path, dtype, device: pixel_model()
    monkeypatch.setitem(sys.modules, "instructbooth.checkpoint", stand_in)
    taxonomy = tmp_path / "taxonomy.json"
    taxonomy.write_text(json.dumps(TAXONOMY))
    args = ["dpo", "--checkpoint", str(tmp_path / "base.safetensors"), "--output", str(tmp_path / "o.safetensors"),
            "--taxonomy", str(taxonomy), "--reward", "target_color:1,0,0", "--device", "cpu", "--prompt-pairs", "2",
            "--images-per-prompt", "3", "--sample-steps", "2", "--resolution", "16", "--min-margin", "0",
            "--cross-pairs", "each", "--steps", "2", "--batch-size", "2", "--rank", "2", "--checkpoint-dir",
            str(tmp_path / "ck"), "--dpo-config", '{"eval_draws": 1, "checkpoint_every": 1}']
    assert main(args) == 0
    taxonomy.write_text(json.dumps({**TAXONOMY, "note": "edited"}))
    capsys.readouterr()
    assert main(args) == 1
    assert "made from other inputs (taxonomy differ)" in capsys.readouterr().err


def test_an_identifier_past_the_token_limit_is_refused(tmp_path):
    from instructbooth.components import tiny_components
    from instructbooth.personalize import PersonalizeConfig, personalize

    photos = torch.rand(2, 32, 32, 3)
    long = PersonalizeConfig(resolution=32, steps=1, instance_template="a photo of " + "very " * 80 + "{id} {cls}")
    with pytest.raises(ValueError, match="identifier 'sks' falls past the text encoder's 77"):
        personalize(tiny_components(), photos, long)
    tail = PersonalizeConfig(resolution=32, steps=1, instance_template="a photo of {id} {cls}, " + "very " * 80)
    assert personalize(tiny_components(), photos, tail).steps_done == 1  # only the tail is cut: fine


def test_broken_model_metadata_is_a_message_not_a_traceback():
    import dataclasses

    from instructbooth.checkpoint.architecture import CheckpointError, _check_heads
    from instructbooth.rewards.image_reward.config import ImageRewardConfig

    with pytest.raises(CheckpointError, match="0 attention heads.*unet_attention_heads=8"):
        _check_heads([320, 640], [1, 1], 0)  # was a ZeroDivisionError
    settings = dataclasses.asdict(ImageRewardConfig())
    settings["vision"]["width"] = "1024"
    with pytest.raises(ValueError, match="'width' must be int, got '1024'"):
        ImageRewardConfig.from_dict(settings)  # was a TypeError deep in the model
    settings["vision"] = [1, 2]
    with pytest.raises(ValueError, match="must be a JSON object"):
        ImageRewardConfig.from_dict(settings)


class _Payload:
    """Unpickling this runs code (it would create a marker file): what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_demo_weights_never_execute_pickled_code(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    crafted = tmp_path / "last.pt"
    torch.save({"ema": _Payload(marker), "modules": []}, crafted)
    code = main(["demo", "--quick", "--weights", str(crafted), "--out", str(tmp_path / "demo"), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "not loaded (nothing in it ran)" in err and "Traceback" not in err
    assert not marker.exists()
