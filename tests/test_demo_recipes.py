"""The demo's named recipes (default, no_prior): their settings, the CLI flag, the report's
settings line, and benchmarks/quality.py's per-recipe outputs, bar and report."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest

from instructbooth.cli import main
from instructbooth.commands.demo import RECIPE_NAMES, add_arguments, config_from_args
from instructbooth.demo.report import prior_line
from instructbooth.demo.settings import RECIPES, DemoConfig, no_prior, quick_config
from conftest import REPO


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def demo_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_default_keeps_the_objects_and_updates_on_256_samples():
    config = DemoConfig(seed=3)
    personalize, rl = config.personalize_settings(), config.rl_settings()
    assert (config.class_images, config.class_kind) == (72, "scenes")
    assert personalize.prior_preservation and personalize.prior_weight == 0.1 and personalize.seed == 3
    assert config.evaluation.guidance == rl.guidance == 1.0  # RL samples as the models are scored
    assert rl.samples_per_epoch == 256 == rl.train_batch_size * rl.gradient_accumulation_steps  # one step per epoch
    assert (rl.learning_rate, rl.identifier_ratio, rl.epochs, rl.seed) == (5e-3, 0.5, 25, 3)
    assert (rl.window_steps, rl.train_timesteps) == (5, 5)  # the first 5 of 10 steps, all trained
    assert rl.parallel_batches == 2  # two batches at a time on the 2-core machine (the same numbers)
    assert RECIPES["default"](config) == config
    assert RECIPE_NAMES == tuple(RECIPES)  # the CLI's choices are the library's recipes


def test_no_prior_is_the_earlier_default_and_changes_nothing_else():
    config = no_prior(DemoConfig(seed=3))
    personalize, rl = config.personalize_settings(), config.rl_settings()
    assert config.class_images == 0 and not personalize.prior_preservation
    assert config.evaluation.guidance == rl.guidance == 2.0
    assert rl.samples_per_epoch == 64 == rl.train_batch_size * rl.gradient_accumulation_steps
    assert (rl.learning_rate, rl.identifier_ratio, rl.train_timesteps, rl.epochs) == (3e-3, 0.25, 5, 25)
    default = DemoConfig(seed=3)
    assert replace(config, class_images=72, class_kind="scenes", evaluation=default.evaluation,
                   rl=default.rl) == default


def test_quick_run_exercises_prior_preservation():
    quick = quick_config(seed=1)
    assert quick.class_images > 0 and quick.personalize_settings().prior_preservation


def test_demo_cli_recipe_with_overrides_on_top():
    config = config_from_args(demo_args("--recipe", "no_prior", "--rl-epochs", "5", "--seed", "2"))
    assert config.class_images == 0 and config.rl.epochs == 5 and config.rl.samples_per_epoch == 64
    assert config.seed == 2
    assert config_from_args(demo_args()) == DemoConfig()


def test_quick_demo_refuses_a_recipe_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--recipe", "no_prior", "--out", str(out)]) == 1
    assert "leave out --recipe no_prior" in capsys.readouterr().err
    assert not out.exists()


def test_report_names_prior_preservation_only_when_the_run_had_it():
    assert prior_line(DemoConfig().to_dict()) == "; prior preservation on 72 scenes images (weight 0.1)"
    assert prior_line(no_prior(DemoConfig()).to_dict()) == ""


def test_quality_writes_each_recipe_to_its_own_files(quality):
    default, other = quality.parse_args([]), quality.parse_args(["--recipe", "no_prior"])
    assert (default.json.name, default.markdown.name) == ("quality.json", "quality.md")
    assert (other.json.name, other.markdown.name) == ("quality_no_prior.json", "quality_no_prior.md")
    assert other.work != default.work
    line = quality.settings_line(quality.recipe_config("default", 0, None))
    assert "rank 16; prior preservation on 72 scenes images (weight 0.1))" in line
    assert "25 epochs x 256 samples (lr 0.005, 5 of 10 steps trained)" in line and line.endswith("guidance 1")
    assert "prior preservation" not in quality.settings_line(quality.recipe_config("no_prior", 0, None))


def fake_run(headline: list[float], alignment: float, fidelity: float) -> dict:
    """One seed's record as run_seed saves it, from per-image headline values."""
    n, mean = len(headline), sum(headline) / len(headline)
    split = {"subject_alignment": mean, "subject_exact": 0.0, "alignment": alignment, "fidelity": fidelity,
             "subject": 1.0, "images": n, "subject_count": n, "subject_exact_count": 0}
    return {"heldout": split, "train": split, "alone": {"subject_count": 20, "images": 24},
            "heldout_images": {"subject_alignment": headline, "fidelity": [fidelity] * n}, "seconds": 1.0}


def test_quality_bar_and_report_from_saved_runs(quality):
    base = {"heldout": {"subject_alignment": 0, "subject_exact": 0, "alignment": 0.6, "fidelity": 0, "subject": 0,
                        "images": 4, "subject_count": 0, "subject_exact_count": 0}, "heldout_images": {}, "seconds": 1}
    base["train"] = base["heldout"]
    done = {"base": {"0": base, "1": base},
            "dreambooth": {"0": fake_run([0, 0.25, 0, 0.25], 0.3, 0.5), "1": fake_run([0, 0, 0.25, 0.25], 0.3, 0.5)},
            "instructbooth": {"0": fake_run([0.5, 0.5, 0.25, 0.5], 0.5, 0.5),
                              "1": fake_run([0.25, 0.5, 0.25, 0.5], 0.5, 0.5)}}
    table = quality.aggregate(done, [0, 1])
    conditions = quality.bar(table, done, [0, 1])
    half, triple, per_seed, fidelity = (c for c in conditions if "holds" in c)
    assert half["value"] == pytest.approx(0.40625, abs=1e-4) and half["target"] == 0.3 and half["holds"]
    assert triple["target"] == 0.375 and triple["holds"]  # 3 x DreamBooth's 0.125
    # seed 1's per-image gains 0.25, 0.25, 0, 0.25... : mean 0.25, SE 0.102 -> 2.45 SE, under 3 (seed 0: 5 SE)
    assert per_seed["value"] == pytest.approx(2.449, abs=1e-3) and not per_seed["holds"]
    assert fidelity["holds"]
    meta = {"seeds": [0, 1], "recipe": "no_prior", "settings": "s", "minutes": 1.0, "run_minutes": 1.0,
            "machine": "m"}
    text = quality.markdown(table, conditions, meta, done)
    assert "0.406 ± 0.031" in text and "does not hold (2.450 against 3.000)" in text
    assert text.startswith("# Quality on the embedded demo world: the no_prior recipe")
