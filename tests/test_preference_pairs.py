"""Preference pairs: the taxonomy and its analogous prompt pairs, the pure pair decisions
(self and cross-validation pairs) with hand-made numbers, and pair construction on a tiny
pixel-space model: what is stored, the cross-pair structure, and resuming after an
interruption ends with the same pairs as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from instructbooth.components import build_components, tiny_configs
from instructbooth.preference.pairs import PairConfig, build_pairs, cross_decision, plan_prompts, self_pair
from instructbooth.preference.store import PairStore
from instructbooth.seeds import derive_seed
from instructbooth.preference.taxonomy import Taxonomy, TaxonomyError
from instructbooth.prompts import Subject
from instructbooth.rewards import BrightnessReward, reward_from_function

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
SMALL = {"themes": {"colour": {"object": {"template": "{subject} with a {colour} {thing}",
                                          "attributes": {"colour": list(COLOURS), "thing": ["ball", "box"]}}}}}


def colour_judge(images, prompts, metadata):
    """Prompt-aware: closeness of the mean colour to the colour the prompt names."""
    targets = torch.tensor([next(c for name, c in COLOURS.items() if name in p) for p in prompts])
    return 1 - (images.float().mean(dim=(2, 3)) - targets.to(images.device)).norm(dim=1) / 3**0.5


def pixel_model(seed: int = 0):
    """A tiny pixel-space model (no VAE): 16x16 images are 12x8x8 "latents"."""
    unet, _, text = tiny_configs()
    unet.update(in_channels=12, out_channels=12, block_out_channels=[16, 32])
    return build_components(unet, None, text, seed=seed)


def small_config(**changes) -> PairConfig:
    settings = dict(prompt_pairs=9, images_per_prompt=3, sample_steps=4, height=16, width=16, min_margin=0.01)
    return PairConfig(**{**settings, **changes})


# --- taxonomy --------------------------------------------------------------------------------


def test_taxonomy_prompts_and_analogous_pairs_differ_in_exactly_one_attribute():
    taxonomy = Taxonomy.from_dict(SMALL)
    assert len(taxonomy.prompts()) == 6
    pairs = taxonomy.analogous_pairs()
    assert len(pairs) == 3 * 2 + 3  # colour pairs for each thing, thing pairs for each colour
    for pair in pairs:
        first, second = dict(pair.first.values), dict(pair.second.values)
        assert [k for k in first if first[k] != second[k]] == [pair.attribute]
    assert pairs[0].first.text("sks plushie") == "sks plushie with a red ball"
    assert pairs[0].second.text("a plushie") == "a plushie with a green ball"


def test_default_taxonomy_loads_and_samples_balanced_distinct_pairs():
    taxonomy = Taxonomy.default()
    assert len(taxonomy.themes) >= 5 and len(taxonomy.subtopics) >= 10
    topics = len(taxonomy.subtopics)
    sample = taxonomy.sample_pairs(topics, seed=3)
    assert len({(p.theme, p.subtopic) for p in sample}) == topics  # one per subtopic first
    assert sample == taxonomy.sample_pairs(topics, seed=3) != taxonomy.sample_pairs(topics, seed=4)
    everything = taxonomy.sample_pairs(10_000)
    assert len(everything) == len(taxonomy.analogous_pairs()) == len(set(everything))
    assert Taxonomy.from_dict(taxonomy.to_dict()) == taxonomy


def test_taxonomy_yaml_and_clear_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("themes:\n  t:\n    s:\n      template: '{subject} in {place}'\n      attributes:\n"
                    "        place: [Paris, Rome]\n")
    assert [p.text("x") for p in Taxonomy.load(path).prompts()] == ["x in Paris", "x in Rome"]
    broken = {
        "slots without values \\['colour'\\]": {"template": "{subject} {colour}", "attributes": {}},
        "not in the template \\['size'\\]": {"template": "{subject} {colour}", "attributes": {"colour": ["a", "b"],
                                                                                         "size": ["s"]}},
        "lists a value twice": {"template": "{subject} {colour}", "attributes": {"colour": ["a", "a"]}},
        "no attribute has two values": {"template": "{subject} {colour}", "attributes": {"colour": ["a"]}},
    }
    for message, body in broken.items():
        with pytest.raises(TaxonomyError, match=message):
            Taxonomy.from_dict({"themes": {"t": {"s": body}}})
    with pytest.raises(TaxonomyError, match="themes"):
        Taxonomy.from_dict({"name": "empty"})


# --- pure pair decisions ---------------------------------------------------------------------


def test_self_pair_exact():
    assert self_pair([0.1, 0.5, 0.3, 0.5], 0.2) == (1, 0)  # ties go to the first best
    assert self_pair([0.1, 0.5, 0.3], 0.4) == (1, 0)  # margin 0.4 >= 0.4
    assert self_pair([0.1, 0.5, 0.3], 0.41) is None
    assert self_pair([0.2, 0.2], 0.0) is None  # no preference without a difference
    assert self_pair([0.7], 0.0) is None


def test_cross_decision_exact():
    # under a: x_a 0.9 vs x_b 0.4 (margin 0.5); under b: x_b 0.8 vs x_a 0.75 (margin 0.05)
    args = dict(own_a=0.9, b_under_a=0.4, own_b=0.8, a_under_b=0.75)
    assert cross_decision(**args, min_margin=0.1, mode="each") == (True, False)
    assert cross_decision(**args, min_margin=0.1, mode="both") == (False, False)
    assert cross_decision(**args, min_margin=0.05, mode="both") == (True, True)
    assert cross_decision(**args, min_margin=0.0, mode="off") == (False, False)
    # the judge prefers the other prompt's image under a: never a pair under a
    assert cross_decision(0.3, 0.6, 0.9, 0.1, min_margin=0.0, mode="each") == (False, True)
    with pytest.raises(ValueError, match="cross mode"):
        cross_decision(1, 0, 1, 0, 0.1, mode="sometimes")


def test_plan_prompts_subject_phrases_and_links():
    taxonomy = Taxonomy.from_dict(SMALL)
    pairs = taxonomy.analogous_pairs()
    subject = Subject("sks", "plushie")
    prompts, links = plan_prompts(pairs + pairs[:2], PairConfig(), subject)
    assert len(prompts) == 6 and len(links) == 9  # repeated pairs add nothing
    assert prompts[0].text == "sks plushie with a red ball"
    assert prompts[0].judge_text == "a plushie with a red ball"
    plain, _ = plan_prompts(pairs, PairConfig(use_identifier=False), subject)
    assert plain[0].text == plain[0].judge_text == "a plushie with a red ball"
    default, _ = plan_prompts(pairs, PairConfig(), None, default_subject="a robot")
    assert default[0].text == "a robot with a red ball"
    assert derive_seed(0, "x", 1) == derive_seed(0, "x", 1) != derive_seed(0, "x", 2)


def test_pair_config_errors():
    with pytest.raises(ValueError, match="cross_pairs"):
        PairConfig(cross_pairs="maybe")
    with pytest.raises(ValueError, match="no pairs"):
        PairConfig(self_pairs=False, cross_pairs="off")


# --- construction on a tiny model ----------------------------------------------------------------


def test_build_pairs_stores_self_and_cross_pairs(tmp_path):
    judge = reward_from_function(colour_judge, name="colour")
    result = build_pairs(pixel_model(), judge, Taxonomy.from_dict(SMALL), tmp_path, small_config(cross_pairs="each"))
    store = PairStore(tmp_path)
    manifest = store.manifest()
    assert manifest["complete"] and result.prompts_done == result.prompts_total == 6 and not result.stopped
    assert store.pairs() == result.pairs and result.counts["cross"] > 0 and result.counts["self"] > 0
    records = manifest["records"]
    best = {r["index"]: r["files"][str(r["best"])] for r in records}
    index_of = {p["text"]: i for i, p in enumerate(manifest["prompts"])}
    for pair in result.pairs:
        assert pair.margin >= 0.01
        assert (tmp_path / pair.winner).is_file() and (tmp_path / pair.loser).is_file()
        if pair.kind == "self":
            record = records[index_of[pair.prompt]]
            assert pair.winner_score == max(record["scores"]) and pair.loser_score == min(record["scores"])
            continue
        # a cross pair under p: p's best image wins, the analogous prompt's best image loses
        mine = index_of[pair.prompt]
        assert pair.winner == best[mine] and pair.loser != best[mine] and pair.loser in best.values()
        assert pair.winner_score == records[mine]["scores"][records[mine]["best"]]
        stored = store.image(pair.winner)
        rejudged = float(colour_judge(stored[None], [pair.judge_prompt], [{}]))
        assert rejudged == pytest.approx(pair.winner_score, abs=1e-6)
    links = sum(len(r["cross"]) for r in records)
    assert links == 9 and result.counts["cross"] + result.counts["cross_dropped"] == 2 * links
    assert store.pairs(kinds=("cross",)) == [p for p in result.pairs if p.kind == "cross"]


def test_both_mode_keeps_mirrored_cross_pairs_and_a_prompt_blind_judge_makes_none(tmp_path):
    taxonomy = Taxonomy.from_dict(SMALL)
    both = build_pairs(pixel_model(), reward_from_function(colour_judge, name="colour"), taxonomy, tmp_path / "a",
                       small_config())
    cross = {(p.winner, p.loser) for p in both.pairs if p.kind == "cross"}
    assert cross and all((loser, winner) in cross for winner, loser in cross)
    # brightness ignores the prompt: x_p beating x_p' under p means losing under p'
    blind = build_pairs(pixel_model(), BrightnessReward(), taxonomy, tmp_path / "b", small_config())
    assert blind.counts["cross"] == 0 and blind.counts["self"] > 0


def test_interrupted_construction_resumes_to_the_same_pairs(tmp_path):
    taxonomy, judge = Taxonomy.from_dict(SMALL), reward_from_function(colour_judge, name="colour")
    config = small_config(cross_pairs="each", keep_all_images=True)
    whole = build_pairs(pixel_model(), judge, taxonomy, tmp_path / "whole", config)

    seen = []
    def stop_after_two(progress):
        seen.append((progress.step, progress.total, progress.preview.size))
        return progress.step < 2

    part = build_pairs(pixel_model(), judge, taxonomy, tmp_path / "part", config, callback=stop_after_two)
    assert part.stopped and part.prompts_done == 2 and seen == [(1, 6, (16, 16)), (2, 6, (16, 16))]
    assert not PairStore(tmp_path / "part").is_complete()
    resumed = build_pairs(pixel_model(), judge, taxonomy, tmp_path / "part", config, callback=seen.append)
    assert [p.step for p in seen[2:]] == [3, 4, 5, 6]  # finished prompts are skipped
    assert resumed.pairs == whole.pairs and not resumed.stopped
    for name in ("pairs.jsonl", "manifest.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    images = sorted(p.name for p in (tmp_path / "whole" / "images").iterdir())
    assert len(images) == 18
    for name in images:
        assert (tmp_path / "part/images" / name).read_bytes() == (tmp_path / "whole/images" / name).read_bytes()


def test_resume_refuses_other_settings_and_restart_clears(tmp_path):
    taxonomy, judge = Taxonomy.from_dict(SMALL), reward_from_function(colour_judge, name="colour")
    config = small_config(prompt_pairs=2)
    build_pairs(pixel_model(), judge, taxonomy, tmp_path, config, callback=lambda p: False)
    with pytest.raises(ValueError, match="min_margin"):
        build_pairs(pixel_model(), judge, taxonomy, tmp_path, small_config(prompt_pairs=2, min_margin=0.2))
    with pytest.raises(ValueError, match="judge"):
        build_pairs(pixel_model(), BrightnessReward(), taxonomy, tmp_path, config)
    with pytest.raises(ValueError, match="model"):  # other weights make other images
        build_pairs(pixel_model(seed=1), judge, taxonomy, tmp_path, config)
    fresh = build_pairs(pixel_model(), judge, taxonomy, tmp_path, small_config(prompt_pairs=2, min_margin=0.2),
                        resume=False)
    assert fresh.prompts_done == fresh.prompts_total
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["min_margin"] == 0.2
