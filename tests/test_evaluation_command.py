"""`instructbooth evaluate` end to end on the tiny random SD model (CPU) with tiny CLIP and DINO
made here: images with fixed seeds per model, the report files and their keys, the numbers
matching a direct computation, the shipped DreamBooth prompt lists, and refusals before any
image is drawn."""

from __future__ import annotations

import json

import pytest
import torch
from evaluation_models import pictures, tiny_clip_folder, tiny_dino_folder
from PIL import Image

from instructbooth.cli import main
from instructbooth.commands.evaluate import load_prompts
from instructbooth.lora import lora_merged
from instructbooth.components import tiny_components
from instructbooth.evaluation import load_clip, load_dino
from instructbooth.evaluation.scoring import scoring_text
from instructbooth.lora import LoraConfig, LoraMetadata, inject_lora, lora_state_dict, save_lora
from instructbooth.prompts import Subject

FAST = ["--random-model", "tiny", "--num-images", "2", "--steps", "2", "--height", "16", "--width", "16",
        "--batch-size", "3", "--device", "cpu"]


def tiny_lora(path, seed: int):
    parts = tiny_components(0)
    params = inject_lora(parts, LoraConfig(rank=2, alpha=2.0), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    save_lora(path, lora_state_dict(parts), LoraMetadata(identifier="sks", class_noun="plushie"))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    photos = root / "photos"
    photos.mkdir()
    for index, image in enumerate(pictures(2, 40, 48, seed=21)):
        Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(photos / f"{index}.png")
    (root / "prompts.txt").write_text("# two templates\na {id} {cls} in the snow\n{subject} riding a horse\n")
    return {"root": root, "photos": photos, "clip": tiny_clip_folder(root / "clip"),
            "dino": tiny_dino_folder(root / "dino"), "prompts": root / "prompts.txt",
            "dreambooth": tiny_lora(root / "db.safetensors", 1), "instructbooth": tiny_lora(root / "ib.safetensors", 2)}


def evaluate(setup, out, *extra):
    return main(["evaluate", *FAST, "--references", str(setup["photos"]), "--prompts", str(setup["prompts"]),
                 "--clip", str(setup["clip"]), "--dino", str(setup["dino"]), "--output-dir", str(out), *extra])


def test_evaluate_writes_images_and_reports_for_base_and_each_lora(setup, tmp_path):
    out = tmp_path / "eval"
    code = evaluate(setup, out, "--lora", f"dreambooth={setup['dreambooth']}", f"instructbooth={setup['instructbooth']}")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [m["label"] for m in report["models"]] == ["base", "dreambooth", "instructbooth"]
    assert report["metrics"] == ["clip_t", "clip_i", "dino"] and report["subject"] == "sks plushie"
    assert set(report) >= {"overall", "per_prompt", "images", "settings", "conventions", "weights"}
    assert [row["text"] for row in report["per_prompt"]] == ["a plushie in the snow", "a plushie riding a horse"]
    assert len(report["images"]) == 3 * 2 * 2
    for model in ("base", "dreambooth", "instructbooth"):
        entry = report["overall"][model]["dino"]
        assert entry["n"] == 4 and -1 <= entry["mean"] <= 1 and entry["sem"] >= 0
    # the numbers are what the metrics give for the saved images
    clip, dino = load_clip(setup["clip"]), load_dino(setup["dino"])
    references = [torch.from_numpy(__import__("numpy").array(Image.open(p))).permute(2, 0, 1).float() / 255
                  for p in sorted(setup["photos"].glob("*.png"))]
    record = report["images"][5]
    saved = torch.from_numpy(__import__("numpy").array(Image.open(out / record["file"]))).permute(2, 0, 1)[None] / 255
    assert record["clip_t"] == pytest.approx(float(clip.text_similarity(saved, [record["text"]])[0]), abs=1e-5)
    assert record["clip_i"] == pytest.approx(float(clip.reference_similarity(saved, references)[0]), abs=1e-5)
    assert record["dino"] == pytest.approx(float(dino.reference_similarity(saved, references)[0]), abs=1e-5)
    # fixed seeds: each model draws from the same noise; the LoRA makes the difference
    base = [r for r in report["images"] if r["model"] == "base"]
    assert [r["seed"] for r in base] == [0, 1, 0, 1]
    assert (out / "images" / "dreambooth" / "000-0.png").is_file()
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| model | CLIP-T | CLIP-I | DINO |" in markdown and "| instructbooth |" in markdown
    assert page.count("<img ") == 12 and 'src="images/base/001-1.png"' in page


def test_the_same_command_makes_the_same_images(setup, tmp_path):
    for name in ("a", "b"):
        assert evaluate(setup, tmp_path / name, "--no-base", "--lora", f"ib={setup['instructbooth']}") == 0
    first, second = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b"))
    assert first["overall"] == second["overall"]
    for record in first["images"]:
        assert (tmp_path / "a" / record["file"]).read_bytes() == (tmp_path / "b" / record["file"]).read_bytes()


def test_a_lora_under_evaluation_is_undone_bit_for_bit(setup):
    from instructbooth.lora import load_lora

    parts = tiny_components(0)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    state, _ = load_lora(setup["dreambooth"])
    with lora_merged(parts, state, 1.0):
        assert any(not torch.equal(before[k], v) for k, v in parts.unet.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in parts.unet.state_dict().items())


def test_shipped_dreambooth_prompt_lists_and_scoring_text():
    objects, _ = load_prompts("dreambooth_objects")
    live, _ = load_prompts("dreambooth_live")
    assert len(objects) == len(live) == 25 and objects[:10] == live[:10]
    assert "a {id} {cls} wearing a santa hat" in live and "a {id} {cls} floating in an ocean of milk" in objects
    both, files = load_prompts("dreambooth_objects,dreambooth_live,heldout")
    assert len(both) == 25 + 10 + 10 and files == []  # the lists share 15 prompts; 10 held-out ones
    plushie = Subject("sks", "plushie")
    assert scoring_text("a red {id} {cls}", plushie) == "a red plushie"
    assert scoring_text("{subject} riding a horse", plushie) == "a plushie riding a horse"
    assert scoring_text("a {id} {cls} in the jungle", Subject("sks", "owl")) == "a owl in the jungle"


@pytest.mark.parametrize("change, message", [
    ({"--references": "MISSING"}, "does not exist|no subject images"),
    ({"--clip": "NOCLIP"}, "no CLIP weights at .*noclip"),
    ({"--clip": "DINO"}, "not a transformers CLIP model"),
    ({"--lora": ["a b=x.safetensors"]}, "label 'a b'"),
    ({"--lora": ["x=DB", "x=IB"]}, "labels must differ"),
    ({"--prompts": "BADPROMPTS"}, "has no {subject}"),
    ({"--height": "20"}, "multiples of 8"),
    ({"--lora": [], "--no-base": None}, "nothing to evaluate"),
    ({"--clip": None, "--dino": None}, "nothing to measure"),
])
def test_bad_input_is_refused_before_any_image(setup, tmp_path, capsys, change, message):
    (tmp_path / "bad.txt").write_text("a photo of a dog\n")
    names = {"MISSING": tmp_path / "missing", "NOCLIP": tmp_path / "noclip", "DB": setup["dreambooth"],
             "IB": setup["instructbooth"], "BADPROMPTS": tmp_path / "bad.txt", "DINO": setup["dino"]}
    options = {"--references": setup["photos"], "--prompts": setup["prompts"], "--clip": setup["clip"],
               "--dino": setup["dino"], "--lora": [f"db={setup['dreambooth']}"], "--output-dir": tmp_path / "out"}
    options.update(change)
    def resolve(value) -> str:
        text = str(value)
        for placeholder, path in names.items():
            text = text.replace(placeholder, str(path))
        return text

    args = []
    for flag, value in options.items():
        values = value if isinstance(value, list) else [] if value is None else [value]
        if values or flag == "--no-base":
            args += [flag, *(resolve(v) for v in values)]
    code = main(["evaluate", *FAST, *args])
    assert code == 1
    import re

    assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "out" / "images").exists()


def test_output_inside_the_references_or_over_an_input_is_refused(setup, capsys):
    code = evaluate(setup, setup["photos"] / "eval", "--no-base", "--lora", f"db={setup['dreambooth']}")
    assert code == 1 and "inside the input folder" in capsys.readouterr().err


def test_image_reward_is_an_optional_column(setup, tmp_path, shared_fixtures):
    from instructbooth.rewards import ImageRewardConfig, convert_to_safetensors

    folder = shared_fixtures / "imagereward_tiny"
    weights = tmp_path / "ImageReward.safetensors"  # a copy that carries its config, as `instructbooth convert` writes
    convert_to_safetensors(folder / "tiny_imagereward.safetensors", weights, ImageRewardConfig.from_json(folder / "config.json"))
    code = main(["evaluate", *FAST, "--num-images", "1", "--references", str(setup["photos"]), "--prompts",
                 str(setup["prompts"]), "--image-reward", str(weights), "--identifier", "sks", "--class-noun",
                 "plushie", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"] == ["image_reward"] and len(report["images"]) == 2
    assert isinstance(report["overall"]["base"]["image_reward"]["mean"], float)
