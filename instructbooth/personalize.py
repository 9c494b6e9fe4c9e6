"""DreamBooth-style LoRA personalization, InstructBooth's first stage.

`personalize(components, images, config)` teaches the model a subject from a few photos:
LoRA on the UNet's attention (optionally the text encoder's) learns to denoise the photos
under an instance prompt holding a rare identifier ("a photo of sks plushie with a blue
star on its belly"). Optional prior preservation adds the denoising loss on images of the
class ("a photo of plushie") made by the base model, so that the class keeps its meaning
and the subject binds to the identifier.

Per step: draw instance (and class) latents from a cache of VAE posteriors made once,
noise them at uniform random timesteps, predict the noise, MSE. Every random draw comes
from one seeded CPU generator whose state goes into checkpoints: a CPU run is
deterministic and a resumed run ends with the same LoRA, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from .components import SDComponents
from .encoding import latent_shape
from .files import write_json
from .prompts import Subject
from .lora import UNET_ATTENTION_TARGETS, TEXT_ATTENTION_TARGETS, LoraConfig, LoraMetadata, inject_lora
from .lora import lora_disabled, lora_state_dict, load_lora_state, remove_lora, save_lora
from .sampling import SamplerSettings, sample_images
from .subject_data import Examples, ImageSource, cache_examples, caption_prompt, class_prompt, draw_batch
from .images import tensor_to_pil
from .subject_data import fill_prompt, fit_square, instance_prompt, load_subject_images
from .training import CheckpointStore, Precision, StepCallback, StepReport, adamw, check_resumable, draw_noise
from .training import gradient_checkpointing, guarded_step, learning_rate_at, noised, non_finite_problem, notify
from .training import precision_problem, require_finite_weights, restore_trainer_state, set_learning_rate, trainer_state, training_mode


@dataclass(frozen=True)
class PersonalizeConfig:
    """Every setting of a personalization run; the defaults suit SD1.5 at 512 px."""

    RUN_LENGTH: ClassVar[str] = "steps"  # a resumed run may be longer or shorter
    RUN_CONTROL: ClassVar[tuple[str, ...]] = (  # settings that do not change the trained LoRA
        "checkpoint_every", "keep_checkpoints", "validation_prompts", "validation_every", "validation_steps",
        "validation_guidance", "validation_eta")

    # subject and prompts
    identifier: str = "sks"  # the rare token bound to the subject
    class_noun: str = "plushie"  # what the subject is, e.g. "dog", "plushie", "backpack"
    description: str = ""  # optional detail for rare subjects, e.g. "with a blue star on its belly"
    instance_template: str = "a photo of {id} {cls}{desc}"  # must contain {id} or {subject}; {desc} adds " <description>"
    class_template: str = "a photo of {cls}"  # prior-preservation prompt; must not contain the identifier
    use_captions: bool = True  # a `.txt` beside an image is that image's prompt template (must mention the id)
    # LoRA
    lora_rank: int = 8  # rank of each LoRA pair (4..16 is typical for a subject)
    lora_alpha: float | None = None  # LoRA scale = alpha / rank; None: alpha = rank (scale 1)
    unet_targets: tuple[str, ...] = UNET_ATTENTION_TARGETS  # UNet attention layers that get LoRA
    train_text_encoder: bool = False  # also LoRA on the text encoder's attention (no text-embedding cache then)
    # optimisation (AdamW)
    steps: int = 500  # optimizer steps (400-800 for 3-10 photos at lr 1e-4)
    batch_size: int = 1  # instance images per step (plus as many class images with prior preservation)
    learning_rate: float = 1e-4  # AdamW learning rate, constant after warm-up
    warmup_steps: int = 0  # steps of linear learning-rate warm-up from 0
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW's denominator epsilon
    max_grad_norm: float | None = 1.0  # gradient-norm clipping; None turns it off
    # data
    resolution: int = 512  # training images are resolution x resolution pixels
    flip: bool = False  # random horizontal flips (probability 0.5); off as in diffusers' DreamBooth scripts:
    #                     they mirror asymmetric subjects (text, a logo on one side)
    min_image_side: float = 0.5  # shorter side below this fraction of the resolution is an error ...
    allow_upscale: bool = False  # ... unless upscaling is allowed (blurry results)
    cache: bool = True  # encode images and (frozen) prompts once; False re-encodes every step (slower)
    # prior preservation
    prior_preservation: bool = False  # add the class-image denoising loss
    prior_weight: float = 1.0  # weight of that loss (DreamBooth uses 1)
    num_class_images: int = 100  # class images to generate when none are given
    class_sample_steps: int = 50  # sampler steps per generated class image (diffusers' DreamBooth script: 50)
    class_eta: float = 0.0  # DDIM noise of class images: 0 = deterministic, as the reference script's pipeline
    #                         (eta 1 gives a noisier, softer class prior)
    class_guidance: float = 7.5  # classifier-free guidance of the class images
    # memory and speed
    mixed_precision: str = "no"  # "no", "fp16" or "bf16": frozen weights in 16 bits, LoRA in fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, ~30% slower)
    # run control
    seed: int = 0  # seeds LoRA init, data order, flips, noise, timesteps and class images
    checkpoint_every: int = 100  # steps between checkpoints (needs a checkpoint folder); 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    validation_prompts: tuple[str, ...] = ()  # templates ({id}, {cls}, {desc}, {subject}) sampled during training
    validation_every: int = 0  # steps between validation samples; 0 = never
    validation_steps: int = 50  # sampler steps of a validation image
    validation_eta: float = 0.0  # DDIM noise of validation images (0 = deterministic)
    validation_guidance: float = 7.5  # guidance of a validation image

    def class_sampler(self) -> SamplerSettings:
        """How prior-preservation class images are drawn."""
        return SamplerSettings(self.class_sample_steps, self.class_guidance, self.class_eta, self.resolution,
                               self.resolution)

    def validation_sampler(self) -> SamplerSettings:
        return SamplerSettings(self.validation_steps, self.validation_guidance, self.validation_eta, self.resolution,
                               self.resolution)

    def lora_config(self) -> LoraConfig:
        text = TEXT_ATTENTION_TARGETS if self.train_text_encoder else ()
        return LoraConfig.of(self.lora_rank, self.lora_alpha, unet_targets=self.unet_targets, text_targets=text)

    @property
    def subject(self) -> Subject:
        """The subject this run teaches (the type RL, DPO and the LoRA metadata use)."""
        return Subject(self.identifier, self.class_noun, self.description)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class ValidationImages:
    step: int  # optimizer steps done when they were made
    prompts: list[str]
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], CPU


@dataclass
class PersonalizeResult:
    lora_state: dict[str, torch.Tensor]  # kohya keys, float32 CPU (ComfyUI's LoraLoader format)
    metadata: LoraMetadata
    loss_history: list[float]  # total loss of every optimizer step, first step first
    steps_done: int
    stopped: bool = False  # the callback stopped the run before config.steps
    validation: list[ValidationImages] = field(default_factory=list)
    last_checkpoint: Path | None = None


class LossParts(NamedTuple):
    total: torch.Tensor  # instance + prior_weight * prior
    instance: torch.Tensor
    prior: torch.Tensor  # 0 without class examples


# --- losses (pure) -----------------------------------------------------------------------------


def dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, num_instance: int, prior_weight: float) -> LossParts:
    """MSE on the first `num_instance` rows plus `prior_weight` times MSE on the rest (class rows).

    pred, target: [B, C, h, w]; each MSE is the mean over its rows and all elements.
    """
    pred, target = pred.float(), target.float()
    instance = F.mse_loss(pred[:num_instance], target[:num_instance])
    has_prior = pred.shape[0] > num_instance
    prior = F.mse_loss(pred[num_instance:], target[num_instance:]) if has_prior else instance.new_zeros(())
    return LossParts(instance + prior_weight * prior, instance, prior)


# --- training data -------------------------------------------------------------------------------


def instance_examples(images: ImageSource, config: PersonalizeConfig) -> Examples:
    """The subject photos, squared, with their prompts (the instance prompt or their captions)."""
    subjects = load_subject_images(images)
    default = instance_prompt(config.instance_template, config.identifier, config.class_noun, config.description)
    prompts = [
        caption_prompt(s, config.identifier, config.class_noun, config.description)
        if config.use_captions and s.caption else default
        for s in subjects
    ]
    pixels = torch.stack([fit_square(s, config.resolution, config.min_image_side, config.allow_upscale) for s in subjects])
    return Examples(pixels, prompts, seed=config.seed)


def check_identifier_fits(components: SDComponents, prompts: list[str], identifier: str) -> None:
    """Refuses prompts whose identifier lies past the text encoder's token limit (77 for CLIP):
    the encoder would cut it off and train the subject on a prompt without it."""
    tokenizer = components.tokenizer
    limit = tokenizer.model_max_length
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer(prompt, truncation=False).input_ids
        if len(ids) <= limit:
            continue
        kept = tokenizer.decode(ids[:limit], skip_special_tokens=True)
        if identifier.lower() not in kept.lower().split():
            raise ValueError(f"the prompt {prompt[:60]!r}... is {len(ids)} tokens and the identifier "
                             f"{identifier!r} falls past the text encoder's {limit}: put {{id}} earlier or shorten it")


class ClassImagesStopped(Exception):
    """The callback stopped the run while class images were being generated."""


ClassProgress = Callable[[int, int], bool]  # (images made, images to make) -> True to stop


def class_progress(callback: StepCallback | None) -> ClassProgress:
    """Reports class-image generation to a training callback (StepReport stage "class_images")."""
    return lambda done, total: notify(callback, StepReport(done, total, float("nan"), stage="class_images"))


def class_examples(images: ImageSource | None, config: PersonalizeConfig, components: SDComponents,
                   progress: ClassProgress | None = None) -> Examples:
    """Given class images, or `num_class_images` generated by the model as it is (LoRA off).
    A given image's caption (`.txt` beside it, with `use_captions`) is its prompt instead of
    the class prompt; like the class prompt, it must not contain the identifier.
    `progress` is told after every generated batch; it returning True raises ClassImagesStopped."""
    prompt = class_prompt(config.class_template, config.identifier, config.class_noun)
    if images is None:
        pixels = generate_class_images(components, prompt, config, progress=progress)
        return Examples(pixels, [prompt] * len(pixels), seed=config.seed + 1)
    subjects = load_subject_images(images)
    pixels = torch.stack([fit_square(s, config.resolution, config.min_image_side, config.allow_upscale)
                          for s in subjects])
    prompts = [class_prompt(s.caption, config.identifier, config.class_noun) if config.use_captions and s.caption
               else prompt for s in subjects]
    return Examples(pixels, prompts, seed=config.seed + 1)


@torch.no_grad()
def generate_class_images(components: SDComponents, prompt: str, config: PersonalizeConfig,
                          count: int | None = None, first: int = 0, batch: int = 4,
                          progress: ClassProgress | None = None) -> torch.Tensor:
    """Class images `first` .. `first + count` (default: all `num_class_images`) of a seeded
    series, [count, 3, R, R] in [0, 1], quantised to 8 bits like images saved as PNG.
    `progress(done, count)` runs after every batch; it returning True raises ClassImagesStopped."""
    count = config.num_class_images if count is None else count
    seeds = [config.seed + 1_000_000 + i for i in range(first, first + count)]
    images = []
    for start in range(0, len(seeds), batch):
        part = seeds[start : start + batch]
        images.append(sample_images(components, [prompt] * len(part), part, config.class_sampler()).cpu())
        if progress is not None and progress(start + len(part), count):
            raise ClassImagesStopped(f"stopped after {start + len(part)} of {count} class images")
    return (torch.cat(images) * 255).round() / 255


# --- the trainer --------------------------------------------------------------------------------


def personalize(
    components: SDComponents,
    images: ImageSource,
    config: PersonalizeConfig = PersonalizeConfig(),
    callback: StepCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    *,
    class_images: ImageSource | None = None,
    base_model_hash: str = "",
) -> PersonalizeResult:
    """Trains a subject LoRA on `images` (files, a folder, or tensors in [0, 1], BHWC).

    `callback(StepReport)` runs after every step; returning False (or raising
    StopTraining) stops the run with a partial result (`stopped=True`). Generated class
    images are reported first, after every batch (`stage="class_images"`, step and total
    counting images); a stop there returns at once with nothing trained. With a
    `checkpoint_dir`, checkpoints are written every `config.checkpoint_every` steps, on
    stop and at the end; `resume=True` continues from the newest one there, `resume=False`
    deletes them and starts over. `class_images` replaces generated class images for
    prior preservation. The components come back without LoRA; with mixed precision
    their frozen weights stay in 16 bits.
    """
    check_config(config, components)
    require_finite_weights(components.modules(), "the base model")
    store = CheckpointStore(checkpoint_dir, config.keep_checkpoints) if checkpoint_dir is not None else None
    trained = [components.unet] + ([components.text_encoder] if config.train_text_encoder else [])
    with training_mode(components.modules(), trained):
        instance = instance_examples(images, config)
        check_identifier_fits(components, instance.prompts, config.identifier)
        if store is not None and not resume:
            store.clear()
        params = inject_lora(components, config.lora_config(), seed=config.seed)
        try:
            precision = Precision.create(config.mixed_precision, components.device)
            precision.cast_frozen(components.modules(), params)
            parts = [instance]
            if config.prior_preservation:
                with lora_disabled(components), precision.autocast():
                    parts.append(class_examples(class_images, config, components, class_progress(callback)))
            return _train(components, params, config, parts, precision, store, callback, base_model_hash)
        except ClassImagesStopped:
            return PersonalizeResult(lora_state_dict(components), make_metadata(config, 0, base_model_hash), [], 0,
                                     stopped=True, last_checkpoint=store.latest() if store is not None else None)
        finally:
            remove_lora(components)


def _train(components, params, config, parts, precision, store, callback, base_model_hash) -> PersonalizeResult:
    if config.cache:
        with precision.autocast():
            for examples in parts:
                cache_examples(examples, components, config.flip, prompts=not config.train_text_encoder)
    optimizer = adamw(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    saved = store.load() if store is not None else None
    start, losses = _restore(saved, config, components, optimizer, precision, generator) if saved else (0, [])
    validation, last = [], store.latest() if store is not None else None
    trained = [components.unet] + ([components.text_encoder] if config.train_text_encoder else [])

    def result(stopped: bool) -> PersonalizeResult:
        return PersonalizeResult(lora_state_dict(components), make_metadata(config, len(losses), base_model_hash),
                                 list(losses), len(losses), stopped, validation, last)

    with gradient_checkpointing(trained, config.gradient_checkpointing):
        for step in range(start, config.steps):
            losses.append(train_step(components, params, config, parts, step, generator, precision, optimizer, store))
            done, preview = step + 1, None
            if config.validation_every and done % config.validation_every == 0:
                validation.append(validate(components, config, done, precision))
                preview = tensor_to_pil(validation[-1].images[0])
            stop = notify(callback, StepReport(done, config.steps, losses[-1], preview))
            periodic = config.checkpoint_every and done % config.checkpoint_every == 0
            if store is not None and (stop or periodic or done == config.steps):
                last = store.save(done, _checkpoint(components, config, optimizer, precision, generator, losses))
            if stop:
                return result(stopped=True)
    return result(stopped=False)


def train_step(components, params, config, parts, step, generator, precision, optimizer, store) -> float:
    """One optimizer step on instance (+ class) examples; returns the loss."""
    set_learning_rate(optimizer, learning_rate_at(step, config))
    with precision.autocast():
        drawn = [draw_batch(examples, step, config.batch_size, config.flip, components, generator,
                            text_grad=config.train_text_encoder) for examples in parts]
    latents, embeddings = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
    noise, timesteps = draw_noise(components.scheduler, latents, generator)
    inputs, target = noised(components.scheduler, latents, noise, timesteps)
    with precision.autocast():
        pred = components.unet(inputs, timesteps, embeddings).sample
    loss = dreambooth_loss(pred, target, len(drawn[0][0]), config.prior_weight).total
    return guarded_step(optimizer, params, precision, loss, step + 1, store, config.max_grad_norm)


@torch.no_grad()
def validate(components: SDComponents, config: PersonalizeConfig, step: int, precision: Precision) -> ValidationImages:
    """Samples one image per validation prompt with fixed seeds (comparable across steps)."""
    prompts = [fill_prompt(t, config.identifier, config.class_noun, config.description) for t in config.validation_prompts]
    seeds = [config.seed + i for i in range(len(prompts))]
    modes = [(m, m.training) for m in components.modules()]
    components.unet.eval(), components.text_encoder.eval()
    try:
        with precision.autocast():
            images = sample_images(components, prompts, seeds, config.validation_sampler())
    finally:
        for module, training in modes:
            module.train(training)
    return ValidationImages(step, prompts, images.float().cpu())


# --- checkpoints, metadata, files ---------------------------------------------------------------


def _checkpoint(components, config, optimizer, precision, generator, losses) -> dict:
    return {"trainable": lora_state_dict(components), "loss_history": list(losses),
            **trainer_state(config, optimizer, precision, {"train": generator})}


def _restore(saved, config, components, optimizer, precision, generator) -> tuple[int, list[float]]:
    check_resumable(saved, config, "personalization")
    load_lora_state(components, saved["trainable"])
    restore_trainer_state(saved, optimizer, precision, {"train": generator})
    return int(saved["step"]), [float(x) for x in saved["loss_history"]]


def make_metadata(config: PersonalizeConfig, steps_done: int, base_model_hash: str = "") -> LoraMetadata:
    return LoraMetadata.naming(
        config.subject, base_model_hash=base_model_hash, method="personalize",
        training_config={**config.to_dict(), "steps_done": steps_done}, rank=config.lora_rank,
        alpha=config.lora_config().alpha,
    )


def save_result(result: PersonalizeResult, path: str | Path) -> Path:
    """Writes the LoRA (safetensors, metadata filled) and `<name>.loss.json` beside it."""
    path = save_lora(path, result.lora_state, result.metadata)
    write_json(path.with_suffix(".loss.json"), {"loss": result.loss_history, "steps_done": result.steps_done,
                                                "stopped": result.stopped})
    return path


def check_config(config: PersonalizeConfig, components: SDComponents) -> None:
    """Raises ValueError naming the first setting that cannot work (with this model)."""
    check_settings(config)
    vae_factor = 64 // latent_shape(components, 64, 64)[1]
    factor = vae_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
    if config.resolution % factor:
        raise ValueError(f"resolution must be a multiple of {factor} for this model, got {config.resolution}")


def check_settings(config: PersonalizeConfig) -> None:
    """The checks that need no model (the CLI runs them before loading one)."""
    for problem in (non_finite_problem(config), precision_problem(config.mixed_precision)):
        if problem:
            raise ValueError(problem)
    positive = {"steps": config.steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                "resolution": config.resolution, "keep_checkpoints": config.keep_checkpoints}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None (no clipping), got {config.max_grad_norm}: "
                         "0 zeroes every update")
    for name in ("checkpoint_every", "validation_every", "warmup_steps", "prior_weight", "class_eta", "validation_eta"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.validation_every and not config.validation_prompts:
        raise ValueError("validation_every is set but validation_prompts is empty; give prompts or set it to 0")
    for template in config.validation_prompts:  # template errors now, not mid-run
        fill_prompt(template, config.identifier, config.class_noun, config.description)
    if config.prior_preservation:
        class_prompt(config.class_template, config.identifier, config.class_noun)
    if config.prior_preservation and config.num_class_images < 1:
        raise ValueError("prior preservation needs num_class_images >= 1 (or class images)")
