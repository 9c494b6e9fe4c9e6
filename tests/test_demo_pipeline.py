"""The embedded demo pipeline: scores, prompts, LoRA swapping, the report, and a --quick
run of `instructbooth demo` end to end (untrained weights, seconds)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from instructbooth.cli import main
from instructbooth.demo import report
from instructbooth.demo.evaluate import Evaluation
from instructbooth.demo.instructions import DemoReward, canonical_prompt, instruction_specs, layout_prompt, score_image
from instructbooth.demo.pipeline import class_specs, load_model, rl_prompts
from instructbooth.demo.prompts import format_prompt, parse_prompt
from instructbooth.demo.subject import draw_prompt
from instructbooth.sampling import SamplerSettings, sample_trajectories

SECTIONS = ("## Numbers", "## What it shows", "## The subject's photos", "## Subject + instruction: the first held-out",
            "## Before / after: held-out prompts", "## Before / after: train prompts", "## RL reward curve",
            "## Settings and time")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `instructbooth demo --quick` run on untrained weights: (out folder, stdout)."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--quick", "--weights", "random", "--out", str(out), "--threads", "1"])
    assert code == 0
    return out, stdout.getvalue()


def test_quick_demo_writes_every_file(quick_run):
    out, _ = quick_run
    for name in ("report.md", "report.html", "demo_metrics.json", "reference.png", "grid_train.png", "grid_subject.png",
                 "grid_heldout.png", "dreambooth.safetensors", "instructbooth.safetensors", "rl/metrics.json",
                 "rl/reward_curve.png", "reference/subject_0.png", "reference/subject_0.txt", "class/class_0.png",
                 "class/class_0.txt"):
        assert (out / name).is_file(), name
    caption = (out / "reference/subject_0.txt").read_text().strip()
    assert caption.startswith("on a ") and caption.endswith(" background next to sks toy with pink and cyan stripes")


def test_class_images_show_the_training_scenes_or_the_class_noun():
    scenes = class_specs(72, seed=0, kind="scenes")
    assert len(set(scenes)) == 72 and all(s.subject is None and not s.held_out and s.count for s in scenes)
    toy = class_specs(10, seed=3)
    assert len(toy) == 10 and all(s.subject == "class" for s in toy)
    assert class_specs(5, seed=1) == class_specs(5, seed=1) != class_specs(5, seed=2)
    with pytest.raises(ValueError, match="unknown class image kind 'dogs'"):
        class_specs(4, seed=0, kind="dogs")


def test_quick_demo_prints_progress(quick_run):
    _, printed = quick_run
    for text in ("model loaded", "base model:", "personalize step", "DreamBooth:", "RL epoch 1/2", "RL epoch 2/2",
                 "InstructBooth:", "report written", "instructbooth  heldout", "subj.-cond. alignment",
                 "dreambooth     alone    subject shown in"):
        assert text in printed, text


def test_report_has_sections_and_the_metrics_numbers(quick_run):
    out, _ = quick_run
    markdown = (out / "report.md").read_text()
    positions = [markdown.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    metrics = json.loads((out / "demo_metrics.json").read_text())
    assert table_numbers(markdown) == expected_rows(metrics["models"])
    html = (out / "report.html").read_text()
    for row in expected_rows(metrics["models"]):
        assert "".join(f"<td>{v}</td>" for v in row) in html.replace(" ± ", " ± ")
    rl = json.loads((out / "rl/metrics.json").read_text())["epochs"]
    assert metrics["rl"]["history"] == rl and metrics["rl"]["epochs"] == 2
    assert set(metrics["time"]["stages"]) >= {"personalize", "rl", "evaluate base"}
    settings = markdown.split("## Settings and time", 1)[1]  # the quick run: 4 steps, window 0.5
    assert "4 sampler steps (2 of the first 2 trained per sample)" in settings
    assert "prior preservation on 3 scenes images (weight 0.1)" in settings


def table_numbers(markdown: str) -> list[list[str]]:
    """The cells of the Numbers tables (held-out, then train) after the model and prompt columns."""
    section = markdown.split("## Numbers", 1)[1].split("##", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row[2:]] for row in rows if row[0].strip() != "Model"]


def expected_rows(models: dict) -> list[list[str]]:
    rows = []
    for split in ("heldout", "train"):
        for name in ("base", "dreambooth", "instructbooth"):
            m, n = models[name][split], models[name][split]["images"]
            se = {k: f"{m[k]:.3f} ± {m[k + '_se']:.3f} (n {n})" for k in ("subject_alignment", "alignment", "fidelity")}
            if name == "base":
                rows.append(["-", "-", se["alignment"], "-", "-"])
            else:
                rows.append([se["subject_alignment"], f"{m['subject_exact_count']} of {n}", se["alignment"],
                             se["fidelity"], f"{m['subject_count']} of {n}"])
    return rows


def test_report_numbers_and_findings_from_real_images(tmp_path):
    """Ground-truth images stand in for the models: the base gets world scenes right, the
    'DreamBooth' images show only the subject, the 'InstructBooth' ones show both."""
    rng = np.random.default_rng(0)
    evaluations = {}
    for name, subject, draw_subject, draw_objects in (("base", None, False, True), ("dreambooth", "identifier", True, False),
                                                      ("instructbooth", "identifier", True, True)):
        evaluations[name] = {}
        for split in ("train", "heldout"):
            specs = instruction_specs(split, subject, detailed=True, limit=3)
            shown = [spec_without(s, draw_subject, draw_objects) for s in specs]
            images = torch.stack([torch.from_numpy(draw_prompt(s, rng)) for s in shown])
            prompts = [format_prompt(s) for s in specs]
            evaluations[name][split] = Evaluation(prompts, images, [score_image(i, p) for i, p in zip(images, prompts)])
    models = {n: {s: e.summary() for s, e in splits.items()} for n, splits in evaluations.items()}
    assert models["base"]["heldout"]["alignment"] == 1.0 and models["instructbooth"]["train"]["fidelity"] > 0.9
    assert models["dreambooth"]["train"]["alignment"] < 0.5 and models["dreambooth"]["train"]["fidelity"] > 0.9
    metrics = fake_metrics(models)
    markdown_path, _ = report.write_report(tmp_path, metrics, evaluations, torch.rand(3, 3, 32, 32), count=2)
    markdown = markdown_path.read_text()
    assert table_numbers(markdown) == expected_rows(models)
    base, db, ib = (models[m]["train"]["alignment"] for m in ("base", "dreambooth", "instructbooth"))
    assert f"dropped from {base:.3f} to {db:.3f} with personalization; RL raised it to {ib:.3f}" in markdown
    assert ("Train prompts (3 images per model): the subject with every instruction attribute right in 0 of 3 "
            "DreamBooth images and 3 of 3 InstructBooth images") in markdown


def spec_without(spec, subject: bool, objects: bool):
    from dataclasses import replace

    if objects and not subject:
        return replace(spec, subject=None, detailed=False)
    if subject and not objects:
        return replace(spec, count=0, colour=None, shape=None)
    return spec


def fake_metrics(models: dict) -> dict:
    from instructbooth.demo.settings import DemoConfig

    return {"models": models, "config": DemoConfig().to_dict(), "machine": {"cpus": 2, "torch_threads": 1,
            "load_average": [1.0, 1.0, 1.0]}, "time": {"stages": {"rl": 1.0}, "total": 2.0}}


def test_score_image_reads_ground_truth():
    spec = parse_prompt("sks toy with pink and cyan stripes next to two blue triangles on a gray background")
    image = torch.from_numpy(draw_prompt(spec, np.random.default_rng(1)))
    scores = score_image(image, format_prompt(spec))
    assert scores["alignment"] == scores["exact"] == scores["reward"] == scores["subject"] == 1.0
    world_only = score_image(image, "two blue triangles on a gray background")
    assert world_only["alignment"] == 1.0  # the subject is not a world object


def test_layouts_round_trip():
    for text in ("sks toy with pink and cyan stripes next to two blue triangles on a gray background",
                 "a toy next to one red circle on a white background", "sks toy on a black background"):
        spec = parse_prompt(text)
        after = layout_prompt(spec, "after")
        assert layout_prompt(spec, "before") == text and canonical_prompt(after) == text
    assert layout_prompt(parse_prompt("sks toy on a black background"), "after") == "on a black background next to sks toy"
    assert canonical_prompt("two red circles on a black background next to sks toy, with pink and cyan stripes") == (
        "sks toy with pink and cyan stripes next to two red circles on a black background")
    with pytest.raises(ValueError, match="layout"):
        layout_prompt(parse_prompt(text), "middle")


def test_prompt_sets():
    assert len(instruction_specs("train", None, False)) == 72 and len(instruction_specs("heldout", "identifier", True)) == 36
    assert len(instruction_specs("heldout", None, False, limit=4)) == 4
    prompts = rl_prompts(detailed=True)
    assert len(prompts.templates) == 75 and len(prompts.heldout) == 36
    drawn = prompts.draw(40, 0.5, torch.Generator().manual_seed(0), describe=True)
    for item in drawn + prompts.heldout_prompts():
        spec = parse_prompt(canonical_prompt(item.text))
        assert spec.subject == ("class" if item.group == "plain" else "identifier")


def test_every_sampler_step_has_a_finite_log_probability():
    components = load_model("random")
    trajectories = sample_trajectories(components, ["sks toy on a white background"], [0],
                                       SamplerSettings(4, 2.0, 1.0, 32, 32))
    assert torch.isfinite(trajectories.log_probs).all()


def test_demo_reward_weighs_the_subject():
    rng = np.random.default_rng(0)
    text = "one green square on a gray background next to sks toy"
    both = draw_prompt(canonical_prompt(text), rng)
    objects_only = draw_prompt("one green square on a gray background", rng)
    images = torch.from_numpy(np.stack([both, objects_only]))
    assert DemoReward()(images, [text, text]).tolist() == pytest.approx([1.0, 0.8])  # subject: 1 of 5
    assert DemoReward(subject_weight=0.5)(images, [text, text]).tolist() == pytest.approx([1.0, 0.5])
    world_caption = "one green square on a gray background"
    assert DemoReward(subject_weight=0.5)(images[1:], [world_caption]).tolist() == [1.0]  # no subject asked
    with pytest.raises(ValueError, match="subject_weight"):
        DemoReward(subject_weight=1.5)


def test_subject_grid_takes_the_first_prompts_whatever_their_scores():
    rng = np.random.default_rng(0)
    specs = instruction_specs("heldout", "identifier", detailed=True, limit=6)
    prompts = [format_prompt(s) for s in specs for _ in range(2)]
    images = torch.stack([torch.from_numpy(draw_prompt(spec_without(parse_prompt(p), True, i >= 6), rng))
                          for i, p in enumerate(prompts)])  # only the last prompts are fully right
    evaluation = Evaluation(prompts, images, [score_image(i, p) for i, p in zip(images, prompts)])
    evaluations = {"dreambooth": {"heldout": evaluation}}
    picks, chosen = report.first_prompts(evaluations, "heldout", 2)
    assert picks == [0, 1] and chosen == list(dict.fromkeys(prompts))[:2]
    assert [report.cell_note(s) for s in evaluation.scores[:2]] == ["S 1/4", "S 1/4"]  # subject, background only
    assert report.cell_note(evaluation.scores[-1]) == "S 4/4"
