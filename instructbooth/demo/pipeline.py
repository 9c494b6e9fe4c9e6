"""The embedded demo as one function: personalize, show the overfitting, RL, report.

`run_demo(config, out_dir)` runs the InstructBooth method end to end on the demo model
(model.py) and its world of coloured shapes, on a CPU:

1. the subject's reference photos (subject.py) are written to `out_dir/reference/`,
   each PNG with its caption ("sks toy on a white background") beside it;
2. the base model is scored on the instruction prompts' world captions
   ("two red circles on a black background");
3. DreamBooth: a LoRA learns the subject from the photos (personalize.py);
4. the personalized model is scored on the same instructions with the identifier
   ("sks toy next to two red circles on a black background"): the overfitting shows as
   lower alignment than the base model had;
5. InstructBooth: RL (DDPO, rl/) maximises the exact alignment reward (checker.py) on
   training prompts with and without the identifier, mixed at `rl.identifier_ratio`;
6. the result is scored the same way, and report.py writes report.md and report.html
   with before/after grids, the reward curve and the numbers (also demo_metrics.json).

Alignment is the share of a prompt's instruction attributes (count, colour, shape,
background) that the checker reads back from an image; subject fidelity is the checker's
likeness of the striped diamond in it (0..1). Scores are over every training scene (72)
and every held-out scene (36), whose colour-shape pairs the base model never saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from ..components import SDComponents
from ..files import write_json
from ..lora import UNET_ALL_TARGETS, UNET_ATTENTION_TARGETS, lora_merged, save_lora
from ..personalize import PersonalizeConfig, PersonalizeResult, personalize
from ..prompts import RLPrompts, Subject
from ..rl.config import RLConfig
from ..rl.trainer import RLResult, train_rl
from ..sampling import PromptEmbeddingCache, sample_images
from ..training import StepReport
from .checker import AlignmentReward, CheckerConfig, check, read_image
from .model import DemoModelConfig, build_demo_components, load_demo_components
from .pretrain import load_plain_checkpoint
from .prompts import CLASS_NOUN, DESCRIPTION, IDENTIFIER, PromptSpec, format_prompt, parse_prompt, subject_phrase
from .resume import PERSONALIZE_DIR, RL_DIR, prepare_run_folder
from .subject import reference_images
from .world import BACKGROUNDS, IMAGE_SIZE, background_phrase, parse_caption, scenes

Log = Callable[[str], None]
MODELS = ("base", "dreambooth", "instructbooth")
SPLITS = ("train", "heldout")
RANDOM_WEIGHTS = "random"  # DemoConfig.weights value for an untrained model (plumbing and tests)


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """How the models are scored: images per prompt, sampled like RL samples them."""

    steps: int = 10  # stochastic DDIM steps per image (as RL samples)
    guidance: float = 2.0  # classifier-free guidance scale (the demo model's best; 4 breaks it)
    eta: float = 1.0  # DDIM noise (1 = ancestral; 0 gives washed-out images with this model)
    per_prompt: int = 2  # images per prompt (fixed seeds, the same for every model)
    prompts_per_split: int | None = None  # evenly spaced subset of the scenes; None = all (72 / 36)
    batch_size: int = 64  # images per sampling call
    alone_per_prompt: int = 8  # images of the subject alone per background (24: its rate within about +-0.1)


# Every Linear and Conv2d of the UNet. Attention alone (SD1.5's usual LoRA) cannot learn the
# striped subject here: the demo UNet has no attention at 16x16, where the stripes live.
ALL_UNET_LAYERS = UNET_ALL_TARGETS

DEMO_PERSONALIZE = PersonalizeConfig(
    identifier=IDENTIFIER,
    class_noun=CLASS_NOUN,
    use_captions=True,  # each reference PNG has its caption beside it
    lora_rank=16,
    lora_alpha=16.0,
    unet_targets=ALL_UNET_LAYERS,
    steps=600,  # seed 0: the subject alone in 23 of 24 images (300 steps on a weaker toy prior: 13 of 24)
    batch_size=6,
    learning_rate=1e-3,
    resolution=IMAGE_SIZE,
    flip=False,  # a mirrored subject has its stripes the wrong way round
    checkpoint_every=0,
)

DEMO_RL = RLConfig(
    method="ddpo",  # InstructBooth's policy gradient
    sample_steps=10,  # 10 stochastic DDIM steps score like 20 with this model (0.70 vs 0.72 alignment)
    eta=1.0,
    guidance=2.0,
    height=IMAGE_SIZE,
    width=IMAGE_SIZE,
    sample_batch_size=32,
    sample_batches=2,  # 64 samples per epoch
    images_per_prompt=8,  # 8 prompts x 8 images per epoch ...
    advantage="group",  # ... each image compared with its own prompt's (150 prompts rarely repeat otherwise)
    epochs=25,
    train_batch_size=16,  # micro-batch ...
    gradient_accumulation_steps=4,  # ... x 4 = all 64 samples in one optimizer step per epoch (seed 0: 0.438 vs 4 steps)
    timestep_window=0.5,  # train on the first 5 of the 10 steps, where the layout is decided: the last step's
    timestep_fraction=1.0,  # std is 0.03 and its 1/std-scaled gradient drowned the rest (no learning at all)
    clip_range=1e-2,
    learning_rate=3e-3,
    lora_rank=4,
    lora_alpha=4.0,
    unet_targets=UNET_ATTENTION_TARGETS,  # on every layer RL learned textures that fool the checker's colour reading
    identifier_ratio=0.25,  # 3 of 4 prompts without the identifier: seed 0 held-out alignment 0.48 (0.5: 0.36)
    reward_plain_prompt=True,  # the method's reward: the image scored against "a toy next to ..." (no subject term)
    heldout_every=5,
    heldout_seeds=1,
)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run. `seed` replaces the seeds of the personalization and RL configs."""

    seed: int = 0  # reference photos, LoRA inits, training noise, evaluation seeds
    reference_images: int = 6  # the subject's photos (cycling through the 3 backgrounds)
    detailed: bool = True  # the detailed description ("with pink and cyan stripes") in every subject prompt
    layout: str = "after"  # where subject prompts name the subject: "after" the scene or "before" it (see LAYOUTS)
    personalize: PersonalizeConfig = DEMO_PERSONALIZE  # stage 1 (description and seed are filled in)
    rl: RLConfig = DEMO_RL  # stage 2 (seed is filled in)
    subject_weight: float | None = None  # None: the method's reward (class-noun prompt, no subject term);
    #                                      a weight: the labelled variant `subject_weighted` (see there)
    evaluation: EvalConfig = EvalConfig()
    class_images: int = 0  # > 0: DreamBooth's prior preservation on this many images the model draws of
    #                        "<training scene> next to a toy" before personalization (write_class_images)
    showcase: int = 4  # prompts per split shown in the report's grids
    weights: str | None = None  # None: the shipped model; a folder with demo_model.*; a pretraining
    #                             checkpoint (last.pt, its EMA weights); "random": untrained

    def personalize_settings(self) -> PersonalizeConfig:
        """The personalization config as run: this seed, the description when `detailed`, prior
        preservation when `class_images`."""
        return replace(self.personalize, seed=self.seed, description=DESCRIPTION if self.detailed else "",
                       prior_preservation=self.class_images > 0)

    def rl_settings(self) -> RLConfig:
        """The RL config as run: this seed; in the "after" layout the description goes on the
        identifier prompts only (RLConfig.use_description), as a comma-separated tail."""
        return replace(self.rl, seed=self.seed, use_description=self.detailed and self.layout == "after")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "reference_images": self.reference_images, "detailed": self.detailed,
                "layout": self.layout, "subject_weight": self.subject_weight,
                "personalize": self.personalize_settings().to_dict(), "rl": self.rl_settings().to_dict(),
                "evaluation": asdict(self.evaluation), "class_images": self.class_images, "showcase": self.showcase, "weights": self.weights}


def quick_config(seed: int = 0, weights: str | None = None) -> DemoConfig:
    """A seconds-long run of every stage (smoke tests): few steps, few prompts, tiny RL."""
    return DemoConfig(
        seed=seed, reference_images=3, weights=weights, showcase=2,
        personalize=replace(DEMO_PERSONALIZE, steps=4, batch_size=3),
        rl=replace(DEMO_RL, sample_steps=4, sample_batch_size=4, sample_batches=2, epochs=2, train_batch_size=4,
                   gradient_accumulation_steps=1, images_per_prompt=2, heldout_every=1),
        evaluation=EvalConfig(steps=4, per_prompt=1, prompts_per_split=4, alone_per_prompt=1),
    )


def subject_weighted(config: DemoConfig, weight: float = 0.5) -> DemoConfig:
    """The labelled variant with a subject term the method does not have: identifier samples
    are scored against the identifier prompt, `weight` x (subject at the checker's threshold)
    + (1 - weight) x (share of the instruction's attributes)."""
    return replace(config, subject_weight=weight, rl=replace(config.rl, reward_plain_prompt=False))


@dataclass
class DemoReport:
    out_dir: Path
    metrics: dict  # what demo_metrics.json holds (see `run_demo`)
    markdown: Path  # report.md
    html: Path  # report.html
    seconds: float  # wall time of the whole run


# --- the model and the subject ----------------------------------------------------------------


def load_model(weights: str | Path | None = None, seed: int = 0) -> SDComponents:
    """The demo model: shipped (None), a folder with demo_model.*, a pretraining checkpoint
    file (its EMA weights), or RANDOM_WEIGHTS (untrained, seeded); with `stochastic_last_step`."""
    path = Path(weights) if weights not in (None, RANDOM_WEIGHTS) else None
    if weights == RANDOM_WEIGHTS:
        components = build_demo_components(seed=seed)
    elif path is not None and path.is_file():
        components = _from_pretraining_checkpoint(path)
    else:
        components = load_demo_components(path)
    return stochastic_last_step(components)


def stochastic_last_step(components: SDComponents) -> SDComponents:
    """Gives the components the DDIM scheduler RL needs: every step stochastic, no x0 clamp.

    - The demo model's schedule uses "trailing" spacing, so a sampler's last step goes from
      t = 1000/S - 1 to "t = -1", where DDIM's default (`set_alpha_to_one`) makes the step
      deterministic: its standard deviation is 0 and DDPO's log-probability of it is NaN.
      `set_alpha_to_one=False` ends it at alpha-bar of t = 0 (0.99915), as SD1.5's does.
    - `clip_sample` clamps the predicted x0 to [-1, 1]; early in sampling 20-60% of it is
      clamped, which zeroes the policy gradient there. Samples score the same without it
      (alignment 0.70 vs 0.71 at 10 steps, measured), so it is off.
    Training reads the same betas, so nothing else changes."""
    config = dict(components.scheduler.config)
    components.scheduler = DDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False)
    return components


def _from_pretraining_checkpoint(path: Path, model: DemoModelConfig = DemoModelConfig()) -> SDComponents:
    """The EMA weights of a pretraining checkpoint (made with the `model` architecture and
    schedule: a checkpoint does not record them)."""
    saved = load_plain_checkpoint(path)
    if "ema" not in saved or "modules" not in saved:
        raise ValueError(f"{path} is not a demo pretraining checkpoint (no 'ema' / 'modules' entries)")
    components = build_demo_components(model)
    params = [p for m in (components.unet, components.text_encoder) for p in m.parameters()]
    shadow = saved["ema"]["shadow"]
    if len(shadow) != len(params) or any(a.shape != b.shape for a, b in zip(params, shadow)):
        raise ValueError(f"the EMA weights in {path} do not fit the default demo model architecture")
    with torch.no_grad():
        for param, value in zip(params, shadow):
            param.copy_(value)
    return components


def subject_of(detailed: bool, layout: str = "after") -> Subject:
    """The RL subject. "after": the description rides on identifier prompts only ("... next to
    sks toy, with pink and cyan stripes"; plain prompts end "next to a toy"). "before": it goes
    into the class phrase, where demo/prompts.py's grammar has it ("sks toy with pink and cyan
    stripes next to ...", "a toy with pink and cyan stripes next to ...")."""
    if layout == "after":
        return Subject(IDENTIFIER, CLASS_NOUN, DESCRIPTION if detailed else "")
    return Subject(IDENTIFIER, f"{CLASS_NOUN} {DESCRIPTION}" if detailed else CLASS_NOUN)


def write_reference(folder: Path, count: int, seed: int, detailed: bool, layout: str = "after") -> torch.Tensor:
    """The subject's photos as PNGs with their captions beside them; returns [N, 3, 32, 32]."""
    images, captions = reference_images(count, seed, detailed)
    captions = [layout_prompt(parse_prompt(c), layout) for c in captions]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("subject_*"):
        old.unlink()
    for i, (image, caption) in enumerate(zip(images, captions)):
        to_pil(torch.from_numpy(image)).save(folder / f"subject_{i}.png")
        (folder / f"subject_{i}.txt").write_text(caption + "\n", encoding="utf-8")
    return torch.from_numpy(images)


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


# --- prompts: where the subject goes, and scores -----------------------------------------------

# "before" is the grammar of demo/prompts.py: "sks toy next to two red circles on a black background".
# "after" names the subject after the scene: "two red circles on a black background next to sks toy".
# The demo model's text encoder reads a word well only at the position pretraining put it
# (captions always start with the count word): one word in front of a caption drops the base
# model's background accuracy from 1.0 to about 0.5, the 9 words of the detailed subject
# phrase to chance, and RL then never sees a sample with the asked-for objects to learn from.
# Under the causal text encoder, words after the caption leave its tokens as they were.
LAYOUTS = ("after", "before")


def layout_prompt(spec: PromptSpec, layout: str) -> str:
    """A subject prompt in a layout; world captions and "before" are demo/prompts.py's form."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "before" or spec.subject is None:
        return format_prompt(spec)
    scene = spec.scene.caption() if spec.scene is not None else f"on {background_phrase(spec.background)}"
    return f"{scene} next to {subject_phrase(spec.subject, spec.detailed)}"


def canonical_prompt(prompt: str) -> str:
    """The demo/prompts.py form of a prompt in either layout (what the checker parses)."""
    head, sep, tail = " ".join(prompt.lower().replace(",", " ").split()).rpartition(" next to ")
    kinds = [(k, d) for k in ("identifier", "class") for d in (True, False) if tail == subject_phrase(k, d)]
    if not sep or not kinds:
        return prompt
    (kind, detailed), words = kinds[0], head.split()
    if head.startswith("on a ") and len(words) == 4:
        return format_prompt(PromptSpec(background=words[2], subject=kind, detailed=detailed))
    scene = parse_caption(head)
    return format_prompt(PromptSpec(scene.background, scene.count, scene.colour, scene.shape, kind, detailed))


class DemoReward(AlignmentReward):
    """The exact alignment reward (checker.py) for prompts in either layout.

    With `subject_weight` w, a subject prompt's reward is w x (subject holds) + (1 - w) x
    (share of its instruction attributes that hold), so the subject is not traded for the
    objects (as one attribute of five it is worth less than count, colour and shape together)."""

    name = "demo_alignment"

    def __init__(self, config: CheckerConfig = CheckerConfig(), subject_weight: float | None = None):
        super().__init__(config)
        if subject_weight is not None and not 0.0 <= subject_weight <= 1.0:
            raise ValueError(f"subject_weight must be in [0, 1] or None, got {subject_weight}")
        self.subject_weight = subject_weight

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        return super().__call__(images, [canonical_prompt(p) for p in prompts], metadata)

    def value(self, result: dict[str, bool]) -> float:
        if self.subject_weight is None or "subject" not in result:
            return super().value(result)
        instruction = float(np.mean([ok for name, ok in result.items() if name != "subject"]))
        return self.subject_weight * float(result["subject"]) + (1 - self.subject_weight) * instruction



def instruction_prompts(split: str, subject: str | None, config: "DemoConfig") -> list[str]:
    """The split's scenes (evenly spaced subset per config.evaluation) as prompts."""
    specs = instruction_specs(split, subject, config.detailed, config.evaluation.prompts_per_split)
    return [layout_prompt(s, config.layout) for s in specs]


def instruction_specs(split: str, subject: str | None, detailed: bool, limit: int | None = None) -> list[PromptSpec]:
    """The split's scenes as prompts with the subject ("identifier", "class") or without (None).
    `limit` keeps an evenly spaced subset."""
    chosen = scenes(split)
    if limit is not None and limit < len(chosen):
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, limit).round().astype(int)]
    return [PromptSpec(s.background, s.count, s.colour, s.shape, subject, detailed and subject is not None)
            for s in chosen]


def class_prompt(prompt: str) -> str:
    """The prompt with the identifier replaced by the class noun, in the checker's form:
    "sks toy next to two red circles ..." -> "a toy next to two red circles ..." (what the
    method's reward scores, as ImageReward scores "a plushie riding a bicycle")."""
    spec = parse_prompt(canonical_prompt(prompt))
    if spec.subject != "identifier":
        return format_prompt(spec)
    return format_prompt(replace(spec, subject="class", detailed=False))


def score_image(image: torch.Tensor, prompt: str, config: CheckerConfig = CheckerConfig()) -> dict[str, float]:
    """One image's scores against its prompt:

    - alignment: share of the instruction's attributes (count, colour, shape, background) that hold;
    - exact: all of them hold;
    - fidelity: the subject's likeness (0..1); subject: fidelity at the checker's threshold;
    - subject_alignment: alignment x subject (the headline: the instruction counts only where
      the subject is there); subject_exact: subject and every instruction attribute;
    - reward: the method's RL reward, the share of the attributes of the class-noun prompt
      ("a toy next to ...": a toy-coloured object is present, count, colour, shape, background).
    """
    reading = read_image(image, config)
    spec = parse_prompt(canonical_prompt(prompt))
    result = check(reading, spec, config)
    instruction = [ok for name, ok in result.items() if name != "subject"]
    alignment, exact = float(np.mean(instruction)), float(all(instruction))
    subject = float(reading.subject_fidelity >= config.subject_threshold) if spec.subject == "identifier" else 0.0
    return {
        "alignment": alignment,
        "exact": exact,
        "fidelity": reading.subject_fidelity,
        "subject": subject,
        "subject_alignment": alignment * subject,
        "subject_exact": exact * subject,
        "reward": float(np.mean(list(check(reading, parse_prompt(class_prompt(prompt)), config).values()))),
    }


HEADLINE = "subject_alignment"  # the demo's headline metric (score_image)


@dataclass
class Evaluation:
    """Images of one model on one split's prompts, and their scores."""

    prompts: list[str]  # one per image, prompt-major: per_prompt images of prompts[0] first
    images: torch.Tensor  # [N, 3, 32, 32] in [0, 1]
    scores: list[dict[str, float]]  # `score_image` of each image

    def summary(self) -> dict[str, float]:
        """Per score: the mean over images, "<name>_se" its standard error (std over images /
        sqrt(n)), "<name>_std" the spread of per-prompt means; "images" n, and "<name>_count"
        for the 0/1 scores (subject, exact, subject_exact): how many images have it."""
        result: dict[str, float] = {}
        for name in self.scores[0]:
            values = np.array([s[name] for s in self.scores])
            per_prompt = [np.mean([s[name] for s, p in zip(self.scores, self.prompts) if p == q])
                          for q in dict.fromkeys(self.prompts)]
            result[name] = round(float(values.mean()), 4)
            result[f"{name}_se"] = round(standard_error(values), 4)
            result[f"{name}_std"] = round(float(np.std(per_prompt)), 4)
            if name in COUNTED:
                result[f"{name}_count"] = int(values.sum())
        result["images"] = len(self.scores)
        return result


COUNTED = ("subject", "exact", "subject_exact")  # 0/1 scores whose image counts the report states


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of `values` (sample std / sqrt(n)); 0 for one value."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(components: SDComponents, prompts: list[str], config: EvalConfig, seed: int) -> Evaluation:
    """`config.per_prompt` images of every prompt at fixed seeds (prompt i, image j: the same
    seed for every model), scored."""
    expanded = [p for p in prompts for _ in range(config.per_prompt)]
    seeds = [seed * 1_000_003 + 1_000 * i + j for i in range(len(prompts)) for j in range(config.per_prompt)]
    embeddings = PromptEmbeddingCache(components)
    parts = []
    for start in range(0, len(expanded), config.batch_size):
        stop = start + config.batch_size
        parts.append(sample_images(components, expanded[start:stop], seeds[start:stop], num_steps=config.steps,
                                   guidance=config.guidance, eta=config.eta, height=IMAGE_SIZE, width=IMAGE_SIZE,
                                   embeddings=embeddings).cpu())
    images = torch.cat(parts)
    return Evaluation(expanded, images, [score_image(img, p) for img, p in zip(images, expanded)])


ALONE = "alone"  # the evaluation of the subject prompt alone ("on a white background next to sks toy ...")


def alone_prompts(config: "DemoConfig") -> list[str]:
    """The subject alone on each background, as the reference photos are captioned."""
    return [layout_prompt(PromptSpec(background=b, subject="identifier", detailed=config.detailed), config.layout)
            for b in BACKGROUNDS]


def evaluate_model(components: SDComponents, subject: str | None, config: DemoConfig) -> dict[str, Evaluation]:
    """{"train": Evaluation, "heldout": Evaluation} on every scene of each split; with the
    identifier also ALONE: the plain subject prompt, `alone_per_prompt` images per background."""
    result = {split: evaluate(components, instruction_prompts(split, subject, config), config.evaluation, config.seed)
              for split in SPLITS}
    if subject == "identifier":
        alone = replace(config.evaluation, per_prompt=config.evaluation.alone_per_prompt)
        result[ALONE] = evaluate(components, alone_prompts(config), alone, config.seed)
    return result


# --- the two training stages -----------------------------------------------------------------


def class_specs(count: int, seed: int) -> list[PromptSpec]:
    """`count` class prompts ("a toy" next to a training scene, or alone), drawn with `seed`."""
    pool = [PromptSpec(background=b, subject="class") for b in BACKGROUNDS]
    pool += instruction_specs("train", "class", detailed=False)
    picks = np.random.default_rng(seed + 7).permutation(len(pool))[:count]
    return [pool[i] for i in sorted(picks)]


def write_class_images(components: SDComponents, folder: Path, config: DemoConfig) -> None:
    """DreamBooth's class images: the model as it is (no LoRA) on class prompts, sampled as the
    evaluation samples, each PNG with its caption beside it (the prior-preservation prompt)."""
    prompts = [layout_prompt(s, config.layout) for s in class_specs(config.class_images, config.seed)]
    seeds = [config.seed * 1_000_003 + 500_000 + i for i in range(len(prompts))]
    ev = config.evaluation
    images = sample_images(components, prompts, seeds, num_steps=ev.steps, guidance=ev.guidance, eta=ev.eta,
                           height=IMAGE_SIZE, width=IMAGE_SIZE).cpu()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("class_*"):
        old.unlink()
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        to_pil(image).save(folder / f"class_{i}.png")
        (folder / f"class_{i}.txt").write_text(prompt + "\n", encoding="utf-8")


def personalize_subject(components: SDComponents, reference_dir: Path, config: DemoConfig, log: Log,
                        checkpoint_dir: Path | None = None) -> PersonalizeResult:
    """DreamBooth LoRA on the reference photos (captions beside them), progress every ~10%;
    with `config.class_images`, prior preservation on class images in reference_dir/../class."""
    settings = config.personalize_settings()
    every = max(1, settings.steps // 10)

    def progress(report: StepReport) -> None:
        if report.stage == "class_images":
            return
        if report.step % every == 0 or report.step == report.total:
            log(f"personalize step {report.step}/{report.total} loss {report.loss:.4f}")

    class_dir = None
    if config.class_images:
        class_dir = reference_dir.parent / "class"
        write_class_images(components, class_dir, config)
    return personalize(components, reference_dir, settings, callback=progress, class_images=class_dir,
                       checkpoint_dir=checkpoint_dir, resume=True)  # a finished checkpoint there is reused


def rl_prompts(detailed: bool, layout: str = "after") -> RLPrompts:
    """Training templates: the subject alone on each background and next to every training
    scene; held-out: next to every held-out scene ("two blue triangles on ... next to {id}")."""
    head = subject_phrase("identifier")

    def templates(split: str) -> tuple[str, ...]:
        specs = instruction_specs(split, "identifier", detailed=False)
        if split == "train":
            specs = [PromptSpec(background=b, subject="identifier") for b in BACKGROUNDS] + specs
        return tuple(dict.fromkeys(layout_prompt(s, layout).replace(head, "{id}", 1) for s in specs))

    return RLPrompts(templates("train"), subject_of(detailed, layout), templates("heldout"))


def instruct(components: SDComponents, lora: Mapping[str, torch.Tensor], reference: torch.Tensor,
             config: DemoConfig, rl_dir: Path, log: Log, resume: bool = False) -> RLResult:
    """InstructBooth's RL stage on top of the personalized LoRA; logs each epoch's rewards.
    `resume` continues from the checkpoints in rl_dir (only for the same demo run: resume.py)."""
    from .checker import subject_fidelity

    settings = config.rl_settings()
    shown = [0]

    def fidelity(images, prompts, metadata):
        return torch.tensor([subject_fidelity(img) for img in images])

    def progress(report: StepReport) -> None:
        shown[0] = log_rl_epochs(rl_dir / "metrics.json", shown[0], settings.epochs, log)

    reward = DemoReward(subject_weight=config.subject_weight)
    result = train_rl(components, reward, rl_prompts(config.detailed, config.layout), settings, callback=progress,
                      checkpoint_dir=rl_dir, resume=resume, base_lora=lora, subject_images=reference,
                      subject_measure=fidelity)
    log_rl_epochs(rl_dir / "metrics.json", shown[0], settings.epochs, log)
    return result


def log_rl_epochs(path: Path, shown: int, total: int, log: Log) -> int:
    """Logs the epochs of metrics.json not logged yet; returns how many are logged now."""
    if not path.is_file():
        return shown
    epochs = json.loads(path.read_text())["epochs"]
    for entry in epochs[shown:]:
        groups = " ".join(f"{g} {s['mean']:.3f}" for g, s in entry["reward"].items() if g != "all" and s["count"])
        fidelity = entry.get("subject_measure")
        extra = f", subject fidelity {fidelity:.3f}" if fidelity is not None else ""
        log(f"RL epoch {entry['epoch']}/{total}: reward {groups}{extra} ({entry['time']['total']:.0f} s)")
    return len(epochs)


# --- the whole demo ---------------------------------------------------------------------------


class _Clock:
    """Wall time since the start and per stage; prefixes log lines with the elapsed time."""

    def __init__(self, callback: Log | None):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.callback = callback

    def log(self, message: str) -> None:
        if self.callback is not None:
            self.callback(f"[{time.perf_counter() - self.start:6.1f} s] {message}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - began, 2)

    def total(self) -> float:
        return time.perf_counter() - self.start


def run_demo(config: DemoConfig = DemoConfig(), out_dir: str | Path = "instructbooth_demo",
             callback: Log | None = None) -> DemoReport:
    """Runs the demo into `out_dir` and writes its report; `callback` gets progress lines.

    out_dir ends up with reference/ (the photos), dreambooth.safetensors and
    instructbooth.safetensors (LoRA files for ComfyUI's LoraLoader), personalize/ and rl/
    (checkpoints; rl/ also metrics.json, reward_curve.png), grid_*.png, demo_metrics.json,
    report.md, report.html and demo_run.json. Run again into the same folder with the same
    settings, it resumes (an interrupted run continues; a finished one only re-evaluates).
    """
    from .report import write_report

    out = Path(out_dir)
    resuming = prepare_run_folder(out, json.loads(json.dumps(asdict(config), default=str)), config.weights)
    clock = _Clock(callback)
    if resuming:
        clock.log(f"resuming the run in {out} (same settings and model); finished stages are reused")
    with clock.stage("load"):
        components = load_model(config.weights, config.seed)
        reference = write_reference(out / "reference", config.reference_images, config.seed, config.detailed,
                                    config.layout)
    clock.log(f"model loaded ({_weights_name(config.weights)}); {len(reference)} reference photos in {out / 'reference'}")
    evaluations = {}
    with clock.stage("evaluate base"):
        evaluations["base"] = evaluate_model(components, None, config)
    clock.log("base model: " + _summary_line(evaluations["base"]))
    with clock.stage("personalize"):
        dreambooth = personalize_subject(components, out / "reference", config, clock.log, out / PERSONALIZE_DIR)
    save_lora(out / "dreambooth.safetensors", dreambooth.lora_state, dreambooth.metadata)
    with clock.stage("evaluate dreambooth"), lora_merged(components, dreambooth.lora_state):
        evaluations["dreambooth"] = evaluate_model(components, "identifier", config)
    clock.log("DreamBooth: " + _summary_line(evaluations["dreambooth"]))
    with clock.stage("rl"):
        rl = instruct(components, dreambooth.lora_state, reference, config, out / RL_DIR, clock.log, resume=resuming)
    save_lora(out / "instructbooth.safetensors", rl.lora_state, rl.metadata)
    with clock.stage("evaluate instructbooth"), lora_merged(components, rl.lora_state):
        evaluations["instructbooth"] = evaluate_model(components, "identifier", config)
    clock.log("InstructBooth: " + _summary_line(evaluations["instructbooth"]))
    metrics = demo_metrics(config, evaluations, dreambooth, rl, clock)
    markdown, html = write_report(out, metrics, evaluations, reference, config.showcase)
    write_json(out / "demo_metrics.json", metrics)
    clock.log(f"report written: {markdown} and {html}")
    return DemoReport(out, metrics, markdown, html, clock.total())


def demo_metrics(config: DemoConfig, evaluations: dict[str, dict[str, Evaluation]], dreambooth: PersonalizeResult,
                 rl: RLResult, clock: _Clock) -> dict:
    """Everything the report states, as plain JSON data."""
    models = {name: {split: ev.summary() for split, ev in evals.items()} for name, evals in evaluations.items()}
    prompts = {name: {split: list(dict.fromkeys(ev.prompts))[:3] for split, ev in evals.items()}
               for name, evals in evaluations.items()}
    return {
        "models": models,
        "example_prompts": prompts,
        "personalize": {"steps": dreambooth.steps_done, "loss_first": dreambooth.loss_history[0],
                        "loss_last": float(np.mean(dreambooth.loss_history[-10:]))},
        "rl": {"epochs": rl.epochs_done, "stop_reason": rl.stop_reason, "history": rl.metrics},
        "config": config.to_dict(),
        "time": {"stages": dict(clock.stages), "total": round(clock.total(), 1)},
        "machine": machine_record(),
    }


def machine_record() -> dict:
    """CPU count, torch threads and the load average (the demo's time depends on them)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load}


def _weights_name(weights: str | None) -> str:
    return "shipped weights" if weights is None else str(weights)


def _summary_line(evaluations: dict[str, Evaluation]) -> str:
    parts = []
    for split, evaluation in evaluations.items():
        s = evaluation.summary()
        if split == ALONE:
            parts.append(f"subject alone: {s['subject_count']} of {s['images']} images show it")
        elif s["subject_count"]:
            parts.append(f"{split} subject-conditional alignment {s[HEADLINE]:.3f} ({s['subject_exact_count']} of "
                         f"{s['images']} images: subject, every attribute right), alignment {s['alignment']:.3f}, "
                         f"fidelity {s['fidelity']:.3f}")
        else:
            parts.append(f"{split} alignment {s['alignment']:.3f} fidelity {s['fidelity']:.3f}")
    return "; ".join(parts)
