"""The RL subject guard's measure: DINO / CLIP-I likeness to the reference photos as a reward
spec (`dino:/path`, `clip_i:/path`), logged per epoch by train_rl and stopping it below
`subject_threshold`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_models import pictures, tiny_clip_folder, tiny_dino_folder
from PIL import Image

from instructbooth.components import tiny_components
from instructbooth.evaluation import SubjectLikeness, load_dino
from instructbooth.prompts import RLPrompts, Subject
from instructbooth.rewards import load_reward
from instructbooth.rewards.base import RewardFn
from instructbooth.rewards.registry import reward_weights_file
from instructbooth.rl.config import RLConfig
from instructbooth.rl.trainer import train_rl

PROMPTS = RLPrompts(("{subject} riding a bicycle", "{subject} swimming"), Subject("sks", "plushie"), ())
RUN = dict(sample_steps=2, guidance=1.0, height=16, width=16, sample_batch_size=4, sample_batches=1, epochs=2,
           train_batch_size=4, advantage="batch", heldout_every=0, identifier_ratio=0.5, images_per_prompt=1,
           gradient_accumulation_steps=1, timestep_window=1.0)


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return tiny_dino_folder(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index, image in enumerate(pictures(3, 40, 48, seed=11)):
        array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"photo_{index}.png")
    return folder


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))


def test_the_measure_follows_the_reward_protocol_and_scores_the_references_one(dino_folder):
    references = pictures(2, seed=11)
    measure = SubjectLikeness(load_dino(dino_folder), references)
    assert isinstance(measure, RewardFn)
    scores = measure(references[:1].expand(3, -1, -1, -1), ["x"] * 3, [{}] * 3)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    reference_pair = float(torch.nn.functional.cosine_similarity(*measure.reference_embeddings, dim=0))
    assert scores.tolist() == pytest.approx([(1 + reference_pair) / 2] * 3, abs=1e-6)  # mean over the 2 references


def test_reward_specs_load_with_a_folder_or_a_tensor_of_photos(dino_folder, photos, tmp_path):
    from_folder = load_reward(f"dino:{dino_folder}", reference_images=photos)
    as_bhwc = torch.stack([torch.from_numpy(np.array(Image.open(p))).float() / 255
                           for p in sorted(photos.glob("*.png"))])
    from_tensor = load_reward(f"dino:{dino_folder}", reference_images=as_bhwc)
    images = pictures(2, seed=4)
    assert torch.allclose(from_folder(images, ["a", "b"], [{}, {}]), from_tensor(images, ["a", "b"], [{}, {}]),
                          atol=1e-6)
    clip = load_reward(f"clip_i:{tiny_clip_folder(tmp_path / 'clip')}", reference_images=photos)
    assert clip.name == "clip_i" and clip(images, ["a", "b"], [{}, {}]).shape == (2,)
    assert reward_weights_file(f"dino:{dino_folder}") == str(dino_folder)
    assert reward_weights_file("clip_i:/models/clip") == "/models/clip"


def test_reward_specs_refuse_what_is_missing(dino_folder, tmp_path):
    with pytest.raises(ValueError, match="needs the subject's photos: pass reference_images="):
        load_reward(f"dino:{dino_folder}")
    with pytest.raises(ValueError, match="dino needs its weights"):
        load_reward("dino", reference_images=pictures(1))
    with pytest.raises(ValueError, match="no DINO weights at"):
        load_reward(f"dino:{tmp_path / 'absent'}", reference_images=pictures(1))
    with pytest.raises(ValueError, match="no subject images in folder"):
        load_reward(f"dino:{dino_folder}", reference_images=tmp_path)


def test_train_rl_logs_the_measure_every_epoch_and_the_threshold_stops_it(dino_folder, photos):
    measure = load_reward(f"dino:{dino_folder}", reference_images=photos)
    result = train_rl(tiny_components(0), brightness, PROMPTS, RLConfig(**RUN), subject_measure=measure)
    assert result.stop_reason == "finished" and result.epochs_done == 2
    logged = [entry["subject_measure"] for entry in result.metrics]
    assert len(logged) == 2 and all(isinstance(v, float) and -1 <= v <= 1 for v in logged)

    guarded = RLConfig(**{**RUN, "subject_threshold": max(logged) + 0.5})  # out of reach: stop at once
    stopped = train_rl(tiny_components(0), brightness, PROMPTS, guarded, subject_measure=measure)
    assert stopped.stop_reason == "subject_guard" and stopped.epochs_done == 0
    assert stopped.metrics[-1]["subject_measure"] == pytest.approx(logged[0], abs=1e-6)
    assert stopped.metrics[-1]["stopped"] == "subject_guard"
