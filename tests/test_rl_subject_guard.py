"""The subject measure of issue #17 wired into RL: `--subject-measure dino:/path` in the CLI, the
node's optional `subject_measure` input, the metrics and the reward curve."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from evaluation_models import tiny_dino_folder
from instructbooth.cli import main
from instructbooth.rl.metrics import SUBJECT_SERIES, draw_reward_curve, reward_series

TINY_RL = ["rl", "--random-model", "tiny", "--identifier", "sks", "--class-noun", "plushie", "--reward", "brightness",
           "--height", "32", "--width", "32", "--sample-steps", "2", "--sample-batch-size", "2", "--images-per-prompt",
           "2", "--sample-batches", "1", "--train-batch-size", "2", "--gradient-accumulation-steps", "1",
           "--epochs", "2", "--lora-rank", "2", "--heldout", "none", "--identifier-ratio", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    generator = torch.Generator().manual_seed(4)
    for i in range(2):
        pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"photo_{i}.png")
    return folder


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return tiny_dino_folder(tmp_path_factory.mktemp("dino") / "dino-tiny")


def test_the_cli_logs_dino_likeness_of_identifier_samples_every_epoch(tmp_path, photos, dino):
    out = tmp_path / "rl.safetensors"
    code = main([*TINY_RL, "--output", str(out), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--subject-measure", f"dino:{dino}", "--subject-images", str(photos)])
    assert code == 0
    epochs = json.loads((tmp_path / "ck" / "metrics.json").read_text())["epochs"]
    measures = [entry["subject_measure"] for entry in epochs]
    assert len(measures) == 2 and all(-1.0 <= m <= 1.0 for m in measures)
    assert [e for e, _ in reward_series(epochs)[SUBJECT_SERIES]] == [1, 2]


def test_the_subject_threshold_stops_the_cli_run_at_the_first_epoch_below_it(tmp_path, photos, dino):
    out = tmp_path / "rl.safetensors"
    code = main([*TINY_RL, "--output", str(out), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--subject-measure", f"dino:{dino}", "--subject-images", str(photos), "--subject-threshold", "1.5"])
    assert code == 0
    epochs = json.loads((tmp_path / "ck" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 1 and epochs[0]["stopped"] == "subject_guard"


def test_a_subject_measure_without_photos_is_refused_before_any_model_loads(tmp_path, dino, capsys):
    code = main([*TINY_RL, "--output", str(tmp_path / "rl.safetensors"), "--subject-measure", f"dino:{dino}"])
    assert code == 1
    assert "give --subject-images" in capsys.readouterr().err
    assert not (tmp_path / "rl.safetensors").exists()


def test_the_reward_curve_draws_the_subject_measure_beside_the_rewards():
    history = [{"epoch": e, "reward": {"all": {"mean": 0.1 * e, "std": 0.0, "count": 2}}, "subject_measure": 0.6 - 0.1 * e}
               for e in (1, 2)]
    assert reward_series(history)[SUBJECT_SERIES] == [(1, pytest.approx(0.5)), (2, pytest.approx(0.4))]
    with_measure = draw_reward_curve(history)
    without = draw_reward_curve([{**h, "subject_measure": None} for h in history])
    assert with_measure.tobytes() != without.tobytes()
