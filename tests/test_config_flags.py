"""Stage configs become command flags one way (instructbooth/commands/config_flags.py)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest

from instructbooth.cli import main
from instructbooth.config_docs import field_docs
from instructbooth.personalize import PersonalizeConfig
from instructbooth.preference.dpo import DPOConfig
from instructbooth.preference.pairs import PairConfig
from instructbooth.rl.config import RLConfig

COMMAND_CONFIGS = {"personalize": [PersonalizeConfig], "rl": [RLConfig], "dpo": [PairConfig, DPOConfig]}
NOT_FLAGS = {"validation_prompts"}  # personalize: --validation-prompt, repeatable (prompts hold commas)


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=name)
    importlib.import_module(f"instructbooth.commands.{name}").add_arguments(parser)
    return parser


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_every_config_field_is_a_flag_whose_help_is_its_comment(command):
    parser = command_parser(command)
    flags = {option: action for action in parser._actions for option in action.option_strings}
    seen = set()
    for config_class in COMMAND_CONFIGS[command]:
        docs = field_docs(config_class)
        for field in dataclasses.fields(config_class):
            if field.name in NOT_FLAGS:
                continue
            action = flags["--" + field.name.replace("_", "-")]
            assert action.dest == field.name and action.default is argparse.SUPPRESS
            if field.name in seen:  # one flag for a field both configs have, documented once
                assert f"also sets {config_class.__name__}.{field.name}" in action.help
            else:
                assert docs[field.name].replace("%", "%%")[:60] in action.help, field.name
        seen |= {f.name for f in dataclasses.fields(config_class)}


def test_multi_line_comments_reach_the_help_and_section_headers_do_not():
    docs = field_docs(RLConfig)
    assert "0.96 trains the first 48" in docs["timestep_window"]  # on a continuation line
    assert "---" not in docs["method"] and "sampling" not in docs["method"]
    assert docs["lora_alpha"].startswith("its scale = alpha / rank")


def test_flag_values_parse_by_field_type_and_only_given_flags_reach_the_config():
    rl = importlib.import_module("instructbooth.commands.rl")
    parser = command_parser("rl")
    base = ["--reward", "brightness", "--output", "o.safetensors"]
    assert rl.config_from_args(parser.parse_args(base)) == RLConfig()
    config = rl.config_from_args(parser.parse_args(base + [
        "--continue-base-lora", "--use-description", "no", "--adv-clip", "none", "--adam-betas", "0.8,0.99",
        "--unet-targets", "to_q,to_v", "--eta", "0.5", "--epochs", "3"]))
    assert (config.continue_base_lora, config.use_description, config.adv_clip) == (True, False, None)
    assert config.adam_betas == (0.8, 0.99) and config.unet_targets == ("to_q", "to_v")
    assert (config.eta, config.epochs) == (0.5, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--continue-base-lora", "maybe"])


def test_a_shared_field_is_one_flag_that_sets_both_configs_and_old_names_still_work():
    dpo = importlib.import_module("instructbooth.commands.dpo")
    args = command_parser("dpo").parse_args(["--checkpoint", "c", "--output", "o.safetensors", "--reward", "brightness",
                                             "--seed", "7", "--rank", "2", "--resolution", "16", "--width", "24"])
    pairs, training = PairConfig(**dpo.pair_settings(args)), DPOConfig(**dpo.dpo_settings(args))
    assert (pairs.seed, training.seed, training.lora_rank) == (7, 7, 2)
    assert (pairs.height, pairs.width) == (16, 24)  # the explicit flag wins over --resolution
    assert training.lora_config().alpha == 2.0  # alpha follows the rank unless given
    personalize = importlib.import_module("instructbooth.commands.personalize")
    config = personalize.config_from_args(command_parser("personalize").parse_args(
        ["--checkpoint", "c", "--images", "p", "--output", "o.safetensors", "--rank", "4", "--alpha", "2",
         "--validation-prompt", "a photo of {id} {cls}, smiling", "--train-text-encoder"]))
    assert (config.lora_rank, config.lora_alpha, config.train_text_encoder) == (4, 2.0, True)
    assert config.validation_prompts == ("a photo of {id} {cls}, smiling",)


@pytest.mark.parametrize("command, extra", [
    ("personalize", ["--images", "nowhere", "--class-noun", "dog"]),
    ("rl", ["--reward", "brightness", "--random-model", "tiny"]),
])
def test_an_unknown_precision_is_refused_before_any_work(command, extra, tmp_path, capsys):
    code = main([command, "--checkpoint", str(tmp_path / "missing.safetensors"), "--output",
                 str(tmp_path / "o.safetensors"), "--mixed-precision", "fp8", *extra])
    assert code == 1
    assert "mixed precision must be one of ['bf16', 'fp16', 'no'], got 'fp8'" in capsys.readouterr().err
